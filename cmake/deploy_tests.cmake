# Deployment and portability checks (included from CMakeLists.txt in native builds with tests). Each is a
# script under tests/deploy/; all need root-free tools except deploy.image and deploy.two_host_* (dockerd,
# network namespaces), which CI has as root. They fail, never skip, when a tool is missing.
set(_dsv4_deploy_env
  "DSV4_BIN=${CMAKE_BINARY_DIR}/dsv4;DSV4_SOURCE_DIR=${CMAKE_SOURCE_DIR};DSV4_BINARY_DIR=${CMAKE_BINARY_DIR}")
set(_d ${CMAKE_SOURCE_DIR}/tests/deploy)

# aarch64: the cross-compiled (scripts/setup_aarch64.sh) core and kernels suites under qemu-aarch64. The kernels
# run must report the NEON path.
add_test(NAME aarch64.test_core COMMAND bash ${_d}/aarch64_run.sh ${CMAKE_BINARY_DIR}/aarch64/test_core)
add_test(NAME aarch64.test_kernels COMMAND bash ${_d}/aarch64_run.sh ${CMAKE_BINARY_DIR}/aarch64/test_kernels
  "CPU de-quantization path: neon")
set_tests_properties(aarch64.test_core aarch64.test_kernels PROPERTIES TIMEOUT 600)
