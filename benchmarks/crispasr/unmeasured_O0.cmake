# Build-time shortcut for a 2-core machine: the crispasr CLI links ~130 model
# libraries, but a MOSS-Audio run executes only ggml, crispasr-core, moss_audio,
# crispasr-lib (audio decoding) and the CLI itself. Those keep the Release flags;
# every other target gets -O0 appended (the last -O wins), which changes nothing
# that a moss-audio run executes.
set(MEASURED_TARGETS ggml ggml-base ggml-cpu crispasr-core moss_audio crispasr-lib crispasr-cli
    crispasr-quantize common)

function(_collect_targets dir out)
    get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
    get_property(subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
    foreach(sub IN LISTS subdirs)
        _collect_targets("${sub}" sub_targets)
        list(APPEND targets ${sub_targets})
    endforeach()
    set(${out} ${targets} PARENT_SCOPE)
endfunction()

function(_unmeasured_O0)
    _collect_targets("${CMAKE_SOURCE_DIR}" all_targets)
    set(lowered "")
    foreach(t IN LISTS all_targets)
        get_target_property(kind ${t} TYPE)
        if(kind MATCHES "STATIC_LIBRARY|SHARED_LIBRARY|MODULE_LIBRARY|OBJECT_LIBRARY|EXECUTABLE"
           AND NOT t IN_LIST MEASURED_TARGETS)
            target_compile_options(${t} PRIVATE -O0)
            list(APPEND lowered ${t})
        endif()
    endforeach()
    list(LENGTH lowered n)
    message(STATUS "unmeasured_O0: -O0 appended to ${n} targets")
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _unmeasured_O0)
