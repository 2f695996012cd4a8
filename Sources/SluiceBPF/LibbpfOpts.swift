// The `sz` of a libbpf options struct, which C code gets from LIBBPF_OPTS.

/// The end of the struct's last field (C's `offsetofend(type, TYPE__last_field)`).
/// libbpf refuses (EINVAL) an options struct with non-zero bytes past its last field,
/// and a Swift copy of a C struct does not keep the trailing padding zero (seen in
/// release builds): so `sz` must not cover the padding, exactly as LIBBPF_OPTS sets it.
func libbpfOptsSize<Options, Field>(through lastField: KeyPath<Options, Field>) -> Int {
    MemoryLayout<Options>.offset(of: lastField)! + MemoryLayout<Field>.size
}
