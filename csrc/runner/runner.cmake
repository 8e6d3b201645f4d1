# mcfast_run: the C++ runner for exported TorchScript samplers (issue 6, owned by the export engineer).
# Included from the top-level CMakeLists.txt after find_package(Torch) and the ops library target.
# MCFAST_OPS_TARGET names that target (default mcfast_ops).
if(NOT DEFINED MCFAST_OPS_TARGET)
  set(MCFAST_OPS_TARGET mcfast_ops)
endif()
add_executable(mcfast_run ${CMAKE_CURRENT_LIST_DIR}/mcfast_run.cpp)
set_target_properties(mcfast_run PROPERTIES CXX_STANDARD 20 CXX_STANDARD_REQUIRED ON)
target_include_directories(mcfast_run PRIVATE ${CMAKE_CURRENT_LIST_DIR})
# The pip torch's ${TORCH_LIBRARIES} carries an unresolved nvrtc entry: link the CPU targets.
# --no-as-needed keeps the ops library (nothing references its symbols; its static
# TORCH_LIBRARY registrations are the point) so torch.ops.mcfast.* exist when the sampler loads.
target_link_libraries(mcfast_run PRIVATE torch_cpu torch c10
                      -Wl,--no-as-needed ${MCFAST_OPS_TARGET} -Wl,--as-needed)
set_target_properties(mcfast_run PROPERTIES BUILD_RPATH "$<TARGET_FILE_DIR:${MCFAST_OPS_TARGET}>;${TORCH_INSTALL_PREFIX}/lib")
