// Proves the sanitizer tests can catch a leaked asfda handle although libasfda is not
// instrumented: this program leaks one volume on purpose, and ctest passes it only when
// LeakSanitizer reports the leak. usage: leak_canary IMAGE.nii
#include <cstdio>
#include <cstring>

#include "asfda.hpp"

// Loads a volume and drops the handle unfreed, in a frame of its own: once it returns, no live
// stack slot of main holds the pointer. (Loaded in main, a temporary's stale copy of the pointer
// sometimes stayed on main's stack, LeakSanitizer counted it as a reference, and the canary
// missed the leak in some runs.)
__attribute__((noinline)) static void leak_one_volume(const char *path) {
    asfda::Volume::load(path).release();  // never freed
}

// Overwrites the stack the dead frame above used, so no stale copy survives there either.
__attribute__((noinline)) static void scrub_stack() {
    volatile unsigned char buf[1 << 16];
    std::memset(const_cast<unsigned char *>(buf), 0, sizeof buf);
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    leak_one_volume(argv[1]);
    scrub_stack();
    std::fprintf(stderr, "leak_canary: leaked one volume handle\n");
    return 0;
}
