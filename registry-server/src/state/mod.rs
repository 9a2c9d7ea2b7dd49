//! The replicated state machine, pure: `apply(index, command)` returns the
//! result and the rows to persist, and reads no clock, draws no random number
//! and does no I/O, so every replica that applies the same log holds the same
//! state. Storage (`storage/`) persists the rows; Raft (`raft/`) decides the
//! order. One file per table family: `catalog.rs` now; `kv.rs`, `session.rs`
//! and `acl.rs` join it, each with its commands in `command.rs`.

pub mod catalog;
pub mod command;
mod plan;
mod rows;
mod stored;

pub use catalog::CatalogState;
pub use command::Command;
pub use rows::RowChange;
