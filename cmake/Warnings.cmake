# Warnings and sanitizers, applied through one interface target that every project target links.
add_library(shardtrain_warnings INTERFACE)
target_compile_options(shardtrain_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wshadow=local -Wnon-virtual-dtor>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${SHARDTRAIN_WERROR}>>:-Werror>)

if(SHARDTRAIN_SANITIZE)
  # Applied globally so that header-only code in tests is instrumented too.
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=undefined>)
  add_link_options(-fsanitize=address,undefined)
endif()
