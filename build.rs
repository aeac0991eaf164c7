//! sqlx's `migrate!` embeds the files of `migrations/` at compile time, but on stable Rust it cannot ask cargo to
//! build again when one is added or changed (sqlx's documentation gives this build script for that).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
