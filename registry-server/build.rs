//! When RocksDB comes prebuilt (ROCKSDB_LIB_DIR, see scripts/rocksdb-lib.sh),
//! librocksdb-sys does not link the C++ standard library that the archive
//! needs, so it is added here. `rustc-link-arg` lands at the end of the linker
//! command, after the archive, where a static link needs it.
fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    if std::env::var_os("ROCKSDB_LIB_DIR").is_some() {
        println!("cargo:rustc-link-arg=-lstdc++");
    }
}
