//! The emitter's graphs against the official ONNX checker (Python `onnx` package, pinned).

mod common;

use std::process::Command;

use pipnet_train::NetworkSpec;
use pipnet_train::seeded::tiny_spec;

fn check_with_onnx(spec: NetworkSpec) {
    let dir = tempfile::tempdir().unwrap();
    let path = common::seeded_model(dir.path(), spec);
    let script = "import sys, onnx\n\
                  m = onnx.load(sys.argv[1])\n\
                  onnx.checker.check_model(m, full_check=True)\n\
                  print(len(m.graph.node), m.opset_import[0].version)";
    let out = Command::new(common::python())
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onnx.checker refused {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.trim().ends_with(" 17"),
        "opset 17 expected: {stdout}"
    );
}

#[test]
fn test_onnx_checker_accepts_the_resnet18_graph() {
    check_with_onnx(NetworkSpec::resnet18(68, 10));
}

#[test]
fn test_onnx_checker_accepts_the_stride16_variant() {
    check_with_onnx(tiny_spec());
}
