// Declarations only (include/CLibFuzzer.h); a C target needs a source file.
