//! The `rcache` command.
