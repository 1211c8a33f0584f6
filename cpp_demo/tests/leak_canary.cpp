// Proves the sanitizer tests can catch a leaked asfda handle although libasfda is not
// instrumented: this program leaks one volume on purpose, and ctest passes it only when
// LeakSanitizer reports the leak. usage: leak_canary IMAGE.nii
#include <cstdio>

#include "asfda.hpp"

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    AsfdaVolume *leaked = asfda::Volume::load(argv[1]).release();  // never freed
    std::printf("leak_canary: leaked the volume at %p\n", static_cast<void *>(leaked));
    return 0;
}
