# Cross build for aarch64 with Debian's gcc-aarch64-linux-gnu; tests run under
# qemu-aarch64 (qemu-user). Debian ships no arm64 MPI/gRPC for a cross
# sysroot, so this builds kernels/ and its tests only:
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=deploy/aarch64-toolchain.cmake -DTERN_KERNELS_ONLY=ON
#   cmake --build build-arm64 && (cd build-arm64 && ctest)
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/usr/aarch64-linux-gnu)
set(TERN_KERNELS_ONLY ON CACHE BOOL "" FORCE)
