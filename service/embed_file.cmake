# Generates a C file that embeds one file as a NUL-terminated array, so the binary serves what it
# was built with without reading files at run time (GET /openapi.json: service/openapi.h).
# Run by the build: cmake -DIN=<file> -DOUT=<file.c> -DNAME=<symbol> -DHEADER=<header> -P embed_file.cmake
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR n "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
set(body "/* Generated from ${IN} by service/embed_file.cmake: do not edit. */\n")
string(APPEND body "#include \"${HEADER}\"\n\n")
string(APPEND body "const char ${NAME}[] = {${hex}0x00};\n")
string(APPEND body "const size_t ${NAME}_len = ${n};\n")
file(WRITE ${OUT}.tmp "${body}")
file(COPY_FILE ${OUT}.tmp ${OUT} ONLY_IF_DIFFERENT)
file(REMOVE ${OUT}.tmp)
