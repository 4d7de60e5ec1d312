# page-embed.cmake: turns the chat page into C at build time.
#
#   cmake -DIN=chat.html -DOUT=page-chat.c -P page-embed.cmake
#
# OUT defines what tern-page.h declares: the page's bytes and the
# Content-Security-Policy it is served with. The policy allows the page's one
# inline <script> and one inline <style> by their SHA-256, so a script or style
# injected anywhere else never runs; the hashes are taken here from the very
# bytes that are embedded, so they cannot go stale. The generated file lives
# in the build tree only.
if(NOT IN OR NOT OUT)
  message(FATAL_ERROR "usage: cmake -DIN=chat.html -DOUT=page-chat.c -P page-embed.cmake")
endif()
file(READ "${IN}" page)

# The text of the one element <tag>...</tag>, checked to be the only one.
function(inline_text tag out)
  string(FIND "${page}" "<${tag}>" a)
  string(FIND "${page}" "<${tag}>" a_last REVERSE)
  string(FIND "${page}" "</${tag}>" b)
  if(a LESS 0 OR b LESS a OR NOT a EQUAL a_last)
    message(FATAL_ERROR "${IN}: needs exactly one <${tag}> element, written as <${tag}> (the CSP hashes it)")
  endif()
  string(LENGTH "<${tag}>" open)
  math(EXPR a "${a} + ${open}")
  math(EXPR n "${b} - ${a}")
  string(SUBSTRING "${page}" ${a} ${n} text)
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

# base64 of a hex string (CMake has no base64).
function(hex_to_base64 hex out)
  set(abc "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
  string(LENGTH "${hex}" len)
  set(b64 "")
  set(i 0)
  while(i LESS len)
    math(EXPR left "${len} - ${i}")
    if(left GREATER_EQUAL 6)
      set(take 6)
    else()
      set(take ${left})
    endif()
    string(SUBSTRING "${hex}" ${i} ${take} group)
    # Pad the group to 3 bytes; the missing bytes become '='.
    if(take EQUAL 2)
      set(group "${group}0000")
    elseif(take EQUAL 4)
      set(group "${group}00")
    endif()
    math(EXPR v "0x${group}")
    foreach(shift 18 12 6 0)
      math(EXPR k "(${v} >> ${shift}) & 63")
      string(SUBSTRING "${abc}" ${k} 1 ch)
      string(APPEND b64 "${ch}")
    endforeach()
    if(take EQUAL 2)
      string(REGEX REPLACE "..$" "==" b64 "${b64}")
    elseif(take EQUAL 4)
      string(REGEX REPLACE ".$" "=" b64 "${b64}")
    endif()
    math(EXPR i "${i} + 6")
  endwhile()
  set(${out} "${b64}" PARENT_SCOPE)
endfunction()

function(csp_hash tag out)
  inline_text(${tag} text)
  string(SHA256 hex "${text}")
  hex_to_base64(${hex} b64)
  set(${out} "'sha256-${b64}'" PARENT_SCOPE)
endfunction()

csp_hash(script script_hash)
csp_hash(style style_hash)

# Style and event-handler attributes are not covered by the hashes: the CSP
# would block them in the browser, so refuse them here, where it is clear why.
string(REGEX REPLACE "<script>.*</script>" "" markup "${page}")
string(REGEX REPLACE "<style>.*</style>" "" markup "${markup}")
string(REGEX MATCH "<[^>]*[ \t\n](style|on[a-z]+)=" bad "${markup}")
if(bad)
  message(FATAL_ERROR "${IN}: '${bad}': inline style and on* attributes are blocked by the page's CSP")
endif()

set(csp "default-src 'none'; script-src ${script_hash}; style-src ${style_hash}; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" hex_len)
math(EXPR size "${hex_len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
# 16 bytes a line.
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)"
  "\\1\n" bytes "${bytes}")
get_filename_component(name "${IN}" NAME)
file(WRITE "${OUT}.tmp" "/* Generated at build time by page-embed.cmake from ${name}: do not edit. */
#include \"tern-page.h\"

const unsigned char tern_page_chat_html[] = {
${bytes}};
const size_t tern_page_chat_html_len = ${size};
const char tern_page_chat_csp[] =
	\"${csp}\";
")
file(RENAME "${OUT}.tmp" "${OUT}")
