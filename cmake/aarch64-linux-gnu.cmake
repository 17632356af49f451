# Cross-compiling for aarch64 Linux on an x86-64 Debian/Ubuntu host with multiarch arm64 -dev packages
# (`dpkg --add-architecture arm64; apt-get install g++-aarch64-linux-gnu libfmt-dev:arm64 ...`, see
# scripts/setup_aarch64.sh). The arm64 libraries live in the host's own /usr/lib/aarch64-linux-gnu, so there is
# no separate sysroot: CMake searches the usual prefixes with the aarch64 library architecture, and pkg-config
# is pointed at the arm64 .pc files only (else it would hand out the x86 ones).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# Header-only packages (nlohmann-json, CLI11) are Multi-Arch: foreign / all and install their CMake configs under
# /usr/share or /usr/lib/cmake: those prefixes serve both architectures.
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
# Test discovery (gtest_discover_tests) and ctest in the cross build run the binaries under user-mode qemu;
# -L points the arm64 dynamic loader at the multiarch root (libc6:arm64 installs its loader and ld.so.conf there).
find_program(DSV4_QEMU_AARCH64 qemu-aarch64)
if(DSV4_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${DSV4_QEMU_AARCH64};-L;/usr/aarch64-linux-gnu")
endif()
