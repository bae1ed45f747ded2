"""Annotates a folder of photos on a Ray cluster into Parquet, one row per photo.

    python examples/python/ray_annotate.py PHOTOS OUT [--actors 2] [--cpus-per-actor 1]
        [--address ADDRESS] [--model MODEL]

Without --address it starts a local cluster with actors x cpus-per-actor CPUs. Each actor holds
one pipnet.Pipeline with that many ONNX Runtime threads (pipnet.ray.Annotator); bad photos are
rows with an error. Prints one JSON line: photos, faces, failed, seconds and photos/s (from
after `ray.init` to the last row written: the actors' start-up is in, the cluster's is not).
"""

import argparse
import json
import time

import pyarrow.parquet
import ray

import pipnet.ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos")
    parser.add_argument("out", help="a folder for the Parquet files")
    # One single-threaded actor per core measured fastest: 0.72-0.83x `pipnet annotate` on 1,000
    # photos on one 2-core machine (0.83-1.14x once started), against 0.47-0.65x for one actor
    # of two threads (README, "Ray").
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="photos per map_batches call")
    parser.add_argument("--address", help="an existing cluster (default: start a local one)")
    parser.add_argument("--model", help="a landmark model file (default: the built-in one)")
    args = parser.parse_args()

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.actors * args.cpus_per_actor, include_dashboard=False)
    files = pipnet.ray.image_files(args.photos)
    start = time.monotonic()
    rows = ray.data.from_items([{"path": f} for f in files]).map_batches(
        pipnet.ray.Annotator,
        fn_constructor_kwargs={"model": args.model},
        batch_size=args.batch,
        num_cpus=args.cpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=args.actors),
    )
    rows.write_parquet(args.out)
    seconds = time.monotonic() - start
    ray.shutdown()
    written = pyarrow.parquet.read_table(args.out)
    summary = {
        "photos": written.num_rows,
        "faces": sum(len(faces) for faces in written.column("faces").to_pylist()),
        "failed": sum(error is not None for error in written.column("error").to_pylist()),
        "seconds": round(seconds, 2),
        "photos_per_second": round(written.num_rows / seconds, 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
