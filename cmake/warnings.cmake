# Warning set for llmem's own targets; errors with LLMEM_WERROR (the ci and
# asan presets). Sanitizers with LLMEM_SANITIZE.
function(llmem_set_warnings target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion
    -Wnon-virtual-dtor -Wold-style-cast -Wno-missing-field-initializers)
  if(LLMEM_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

if(LLMEM_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=all)
  add_link_options(-fsanitize=address,undefined)
endif()
