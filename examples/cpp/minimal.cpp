// Minimal C++ use of pipnet: landmarks of one synthetic gray image treated as a face crop, with
// the handle and result owned by std::unique_ptr.
//
/*   c++ examples/cpp/minimal.cpp -Iinclude -Ltarget/release -lpipnet_ffi \
         -Wl,-rpath,$PWD/target/release -o minimal && ./minimal MODEL */
#include <cstdio>
#include <memory>
#include <vector>

#include "pipnet.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s MODEL\n", argv[0]);
        return 2;
    }
    PipnetOptions options{};
    options.landmark_model = argv[1];
    PipnetHandle *raw = nullptr;
    if (pipnet_create(&options, &raw) != PIPNET_STATUS_OK) {
        std::fprintf(stderr, "pipnet_create: %s\n", pipnet_last_error());
        return 1;
    }
    std::unique_ptr<PipnetHandle, decltype(&pipnet_destroy)> pipnet(raw, pipnet_destroy);

    PipnetModelInfo info{};
    pipnet_model_info(pipnet.get(), &info);
    std::vector<unsigned char> gray(info.input_size * info.input_size, 128);
    PipnetImage crop{gray.data(), info.input_size, info.input_size, info.input_size,
                     PIPNET_PIXEL_GRAY};
    PipnetResult *result = nullptr;
    if (pipnet_landmarks_in_crops(pipnet.get(), &crop, 1, &result) != PIPNET_STATUS_OK) {
        std::fprintf(stderr, "pipnet_landmarks_in_crops: %s\n", pipnet_last_error());
        return 1;
    }
    std::unique_ptr<PipnetResult, decltype(&pipnet_result_free)> owned(result, pipnet_result_free);
    PipnetFace face{};
    pipnet_result_face(owned.get(), 0, &face);
    std::printf("%s: %u landmarks, first at %.2f %.2f\n", info.scheme, face.num_landmarks,
                face.landmarks[0], face.landmarks[1]);
    return 0;
}
