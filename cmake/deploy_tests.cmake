# Deployment and portability checks (included from CMakeLists.txt in native builds with tests). Each is a
# script under tests/deploy/; all need root-free tools except deploy.image and deploy.two_host_* (dockerd,
# network namespaces), which CI has as root. They fail, never skip, when a tool is missing.
set(_dsv4_deploy_env
  "DSV4_BIN=${CMAKE_BINARY_DIR}/dsv4;DSV4_SOURCE_DIR=${CMAKE_SOURCE_DIR};DSV4_BINARY_DIR=${CMAKE_BINARY_DIR}")
set(_d ${CMAKE_SOURCE_DIR}/tests/deploy)

# aarch64: the cross-compiled (scripts/setup_aarch64.sh) core and kernels suites under qemu-aarch64. The kernels
# run must report the NEON path; it skips the cpu_guard instances (the guard checks which memory an op touches,
# the same on every architecture, and doubled the run under qemu).
# Registered on x86-64 hosts only: on an aarch64 host the whole native suite is already the aarch64 run.
if(CMAKE_HOST_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  add_test(NAME aarch64.test_core COMMAND bash ${_d}/aarch64_run.sh ${CMAKE_BINARY_DIR}/aarch64/test_core)
  add_test(NAME aarch64.test_kernels COMMAND bash ${_d}/aarch64_run.sh ${CMAKE_BINARY_DIR}/aarch64/test_kernels
    "CPU de-quantization path: neon" "*-*/cpu_guard")
  # Byte-level BPE, UTF-8 and DSML parsing (char is unsigned on aarch64): a subset, the suite is slow under qemu.
  add_test(NAME aarch64.test_tokenizer COMMAND bash ${_d}/aarch64_run.sh ${CMAKE_BINARY_DIR}/aarch64/test_tokenizer ""
    "ByteLevel.*:Utf8Lossy.*:DsmlParser.*:PreTokenizer.Utf8Validation:PreTokenizer.PiecesTileAnyBytes:Tokenizer.SpecExamples:Tokenizer.InvalidUtf8RoundTripsAsBytes:IncrementalDetokenizer.HoldsSplitCharactersUntilComplete")
  set_tests_properties(aarch64.test_core aarch64.test_kernels aarch64.test_tokenizer PROPERTIES TIMEOUT 600
    ENVIRONMENT "${_dsv4_deploy_env}")
endif()

# Static checks: shellcheck on every shell script, `docker-compose config` on the Compose file + example .env.
add_test(NAME deploy.shellcheck COMMAND bash ${_d}/shellcheck.sh)
add_test(NAME deploy.compose_config COMMAND bash ${_d}/compose_config.sh)
# The settings -> `dsv4 serve` flag mapping of deploy/dsv4-launch.sh (vLLM's multi-rank flags, API key in env).
add_test(NAME deploy.launch_flags COMMAND bash ${_d}/launch_flags.sh)
set_tests_properties(deploy.shellcheck deploy.compose_config deploy.launch_flags PROPERTIES TIMEOUT 300
  ENVIRONMENT "${_dsv4_deploy_env}")

# The CPU image from deploy/Dockerfile on a locally made Debian base (no registry), serving a chat request.
# RUN_SERIAL: the image build compiles dsv4 on both cores; other tests' liveness bounds should not compete.
add_test(NAME deploy.image COMMAND bash ${_d}/image.sh)
set_tests_properties(deploy.image PROPERTIES TIMEOUT 2400 RUN_SERIAL ON ENVIRONMENT "${_dsv4_deploy_env}")

# Native mode of scripts/start-dsv4.sh / stop-dsv4.sh across two network namespaces with a real sshd.
add_test(NAME deploy.native_single_node COMMAND bash ${_d}/two_host.sh single)
add_test(NAME deploy.two_host_preflight COMMAND bash ${_d}/two_host.sh preflight)
add_test(NAME deploy.two_host_tp2 COMMAND bash ${_d}/two_host.sh tp2)
set_tests_properties(deploy.native_single_node deploy.two_host_preflight deploy.two_host_tp2 PROPERTIES
  TIMEOUT 900 ENVIRONMENT "${_dsv4_deploy_env}")
