/*
 * annotate IMAGE.ppm [MODEL]: detect the faces of a binary PPM (P6) image with pipnet and print,
 * per face, a "# face K of N ..." line, then one "x y" line per landmark, in image pixels.
 * Without MODEL, the landmark model built into the library.
 *
 * Build (see the README's "Use from C"):
 *   cc examples/c/annotate.c -Iinclude -Ltarget/release -lpipnet_ffi \
 *      -Wl,-rpath,$PWD/target/release -o annotate
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipnet.h"

/* Reads a binary PPM with maxval 255; returns malloc'd RGB pixels or NULL. */
static unsigned char *read_ppm(const char *path, uint32_t *width, uint32_t *height) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char magic[3] = {0};
    unsigned w = 0, h = 0, maxval = 0;
    unsigned char *pixels = NULL;
    /* Header: "P6", width, height, maxval, separated by whitespace (comments not supported). */
    if (fscanf(f, "%2s %u %u %u", magic, &w, &h, &maxval) == 4 && strcmp(magic, "P6") == 0 &&
        maxval == 255 && w > 0 && h > 0 && w < 65536 && h < 65536 && fgetc(f) != EOF) {
        size_t size = (size_t)w * h * 3;
        pixels = malloc(size);
        if (pixels && fread(pixels, 1, size, f) != size) {
            free(pixels);
            pixels = NULL;
        }
    }
    fclose(f);
    *width = w;
    *height = h;
    return pixels;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: %s IMAGE.ppm [MODEL]\n", argv[0]);
        return 2;
    }
    if (pipnet_abi_version() != PIPNET_ABI_VERSION) {
        fprintf(stderr, "pipnet ABI %u, header %u\n", pipnet_abi_version(), PIPNET_ABI_VERSION);
        return 2;
    }
    uint32_t width, height;
    unsigned char *pixels = read_ppm(argv[1], &width, &height);
    if (!pixels) {
        fprintf(stderr, "%s: not a binary PPM (P6, maxval 255)\n", argv[1]);
        return 1;
    }

    /* All zeros are the CLI's defaults (what each field's zero means: PipnetOptions in
       pipnet.h); a NULL model path is the built-in model. */
    PipnetOptions options = {0};
    options.landmark_model = argc == 3 ? argv[2] : NULL;
    PipnetHandle *pipnet = NULL;
    if (pipnet_create(&options, &pipnet) != PIPNET_STATUS_OK) {
        fprintf(stderr, "pipnet_create: %s\n", pipnet_last_error());
        free(pixels);
        return 1;
    }

    PipnetImage image = {pixels, width, height, (size_t)width * 3, PIPNET_PIXEL_RGB};
    PipnetResult *result = NULL;
    int code = 0;
    size_t faces = 0;
    if (pipnet_detect(pipnet, &image, &result) != PIPNET_STATUS_OK ||
        pipnet_result_count(result, &faces) != PIPNET_STATUS_OK) {
        fprintf(stderr, "pipnet_detect: %s\n", pipnet_last_error());
        code = 1;
    }
    for (size_t i = 0; i < faces; i++) {
        PipnetFace face;
        if (pipnet_result_face(result, i, &face) != PIPNET_STATUS_OK) {
            fprintf(stderr, "pipnet_result_face: %s\n", pipnet_last_error());
            code = 1;
            break;
        }
        printf("# face %zu of %zu: box %.1f %.1f %.1f %.1f, presence %.3f", i + 1, faces,
               face.face_box[0], face.face_box[1], face.face_box[2], face.face_box[3],
               face.presence);
        if (face.has_pose) {
            printf(", yaw %.1f pitch %.1f roll %.1f", face.pose.yaw, face.pose.pitch,
                   face.pose.roll);
        }
        printf("\n");
        for (uint32_t k = 0; k < face.num_landmarks; k++) {
            printf("%.3f %.3f\n", face.landmarks[2 * k], face.landmarks[2 * k + 1]);
        }
    }
    pipnet_result_free(result);
    pipnet_destroy(pipnet);
    free(pixels);
    return code;
}
