/*
 * Misuse of the pipnet C ABI from C: every call must return the documented error status with a
 * message, never crash. Run by tests/ffi.rs as `misuse MODEL NOT_A_MODEL`; prints one line per
 * check and exits non-zero on the first unexpected status.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipnet.h"

static int failures = 0;

static void expect(const char *what, PipnetStatus got, PipnetStatus want) {
    const char *message = pipnet_last_error();
    int ok = got == want && (want == PIPNET_STATUS_OK || (message && message[0] != '\0'));
    printf("%s %s: status %d (want %d): %s\n", ok ? "ok" : "FAIL", what, (int)got, (int)want,
           message ? message : "(null)");
    if (!ok) failures++;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    PipnetOptions options = {0};
    PipnetHandle *handle = NULL;

    expect("create with NULL options", pipnet_create(NULL, &handle), PIPNET_STATUS_NULL_POINTER);
    expect("create with NULL out", pipnet_create(&options, NULL), PIPNET_STATUS_NULL_POINTER);
    expect("create with NULL model path (the built-in model)", pipnet_create(&options, &handle),
           PIPNET_STATUS_OK);
    expect("destroy the built-in model's handle", pipnet_destroy(handle), PIPNET_STATUS_OK);
    handle = NULL;
    options.landmark_model = argv[2];
    expect("create with a file that is not a model", pipnet_create(&options, &handle),
           PIPNET_STATUS_MODEL_LOAD);
    options.landmark_model = "/nonexistent/model.onnx";
    expect("create with a missing file", pipnet_create(&options, &handle),
           PIPNET_STATUS_MODEL_LOAD);
    options.landmark_model = argv[1];
    options.device = 7;
    expect("create with an unknown device", pipnet_create(&options, &handle),
           PIPNET_STATUS_INVALID_ARGUMENT);
    options.device = PIPNET_DEVICE_CPU;
    options.detector_model = argv[1];
    expect("create with a landmark graph as detector", pipnet_create(&options, &handle),
           PIPNET_STATUS_MODEL_LOAD);
    options.detector_model = NULL;
    expect("create", pipnet_create(&options, &handle), PIPNET_STATUS_OK);

    unsigned char pixels[16 * 16 * 3];
    memset(pixels, 100, sizeof pixels);
    PipnetImage image = {pixels, 16, 16, 48, PIPNET_PIXEL_RGB};
    PipnetResult *result = NULL;
    expect("detect with NULL handle", pipnet_detect(NULL, &image, &result),
           PIPNET_STATUS_NULL_POINTER);
    expect("detect with NULL image", pipnet_detect(handle, NULL, &result),
           PIPNET_STATUS_NULL_POINTER);
    expect("detect with NULL out", pipnet_detect(handle, &image, NULL),
           PIPNET_STATUS_NULL_POINTER);
    PipnetImage bad = image;
    bad.pixels = NULL;
    expect("detect with NULL pixels", pipnet_detect(handle, &bad, &result),
           PIPNET_STATUS_NULL_POINTER);
    bad = image;
    bad.width = 0;
    expect("detect with zero width", pipnet_detect(handle, &bad, &result),
           PIPNET_STATUS_INVALID_ARGUMENT);
    bad = image;
    bad.stride = 47;
    expect("detect with a stride shorter than a row", pipnet_detect(handle, &bad, &result),
           PIPNET_STATUS_INVALID_ARGUMENT);
    bad = image;
    bad.stride = (size_t)-1;
    expect("detect with an overflowing stride", pipnet_detect(handle, &bad, &result),
           PIPNET_STATUS_INVALID_ARGUMENT);
    bad = image;
    bad.width = 0xFFFFFFFFu;
    bad.height = 0xFFFFFFFFu;
    bad.stride = (size_t)0xFFFFFFFFu * 3;
    expect("detect with a huge image", pipnet_detect(handle, &bad, &result),
           PIPNET_STATUS_INVALID_ARGUMENT);
    bad = image;
    bad.format = 9;
    expect("detect with an unknown pixel format", pipnet_detect(handle, &bad, &result),
           PIPNET_STATUS_INVALID_ARGUMENT);
    expect("crops with count 0", pipnet_landmarks_in_crops(handle, &image, 0, &result),
           PIPNET_STATUS_INVALID_ARGUMENT);

    expect("detect", pipnet_detect(handle, &image, &result), PIPNET_STATUS_OK);
    size_t count = 99;
    expect("count", pipnet_result_count(result, &count), PIPNET_STATUS_OK);
    PipnetFace face;
    expect("face index out of range", pipnet_result_face(result, count, &face),
           PIPNET_STATUS_INVALID_ARGUMENT);
    expect("free result", pipnet_result_free(result), PIPNET_STATUS_OK);
    expect("free result twice", pipnet_result_free(result), PIPNET_STATUS_STALE_HANDLE);
    expect("count of a freed result", pipnet_result_count(result, &count),
           PIPNET_STATUS_STALE_HANDLE);
    expect("free NULL result", pipnet_result_free(NULL), PIPNET_STATUS_OK);

    PipnetModelInfo info;
    expect("model info with NULL out", pipnet_model_info(handle, NULL),
           PIPNET_STATUS_NULL_POINTER);
    expect("destroy", pipnet_destroy(handle), PIPNET_STATUS_OK);
    expect("destroy twice", pipnet_destroy(handle), PIPNET_STATUS_STALE_HANDLE);
    expect("model info on a destroyed handle", pipnet_model_info(handle, &info),
           PIPNET_STATUS_STALE_HANDLE);
    expect("detect on a destroyed handle", pipnet_detect(handle, &image, &result),
           PIPNET_STATUS_STALE_HANDLE);
    int on_stack = 0;
    expect("detect on a pointer that is not a handle",
           pipnet_detect((PipnetHandle *)&on_stack, &image, &result), PIPNET_STATUS_STALE_HANDLE);
    expect("destroy NULL", pipnet_destroy(NULL), PIPNET_STATUS_OK);

    printf("%d failed\n", failures);
    return failures == 0 ? 0 : 1;
}
