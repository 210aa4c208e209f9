//! The crate's layers, as `src/lib.rs` describes them: each module uses
//! only the ones below it. This reads every source file's `crate::` paths
//! (in `use` lines, groups and inline paths; comments aside) and fails on
//! one that runs up or sideways, or on a module missing from the table.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top to bottom; modules in one row are siblings and use each other not.
const LAYERS: &[&[&str]] = &[
    &["cli", "fuzzing"],
    &["daemon"],
    &["config"],
    &["orchestrator", "worker"],
    &["client"],
    &["net"],
    &["command"],
    &["metrics"],
    &["protocol"],
    &["tls", "auth"],
    &["placement"],
    &["version", "hash", "zipf"],
    &["sys", "shutdown", "join", "defaults", "clients"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/` (`net/mod.rs` → `[net]`).
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().expect("a file name");
    match file.strip_suffix(".rs") {
        Some("mod") | None => {}
        Some(stem) => parts.push(stem.to_string()),
    }
    parts
}

/// The source without comments (line comments and doc comments; a `//`
/// inside a string literal is rare enough in this crate to ignore).
fn code(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level names a `use crate::{...}` group brings in.
fn group_names(body: &str) -> Vec<String> {
    let (mut depth, mut current, mut names) = (0, String::new(), Vec::new());
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => names.push(std::mem::take(&mut current)),
            _ if depth == 0 => current.push(c),
            _ => {}
        }
    }
    names.push(current);
    names
        .iter()
        .map(|n| ident_at(n.trim()).to_string())
        .filter(|n| !n.is_empty() && n != "self")
        .collect()
}

/// What follows each occurrence of `prefix` that starts a path (not
/// preceded by an identifier character or one of `also`).
fn after_each<'s>(code: &'s str, prefix: &'s str, also: char) -> impl Iterator<Item = &'s str> {
    code.match_indices(prefix).filter_map(move |(i, _)| {
        let preceded = code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == also);
        (!preceded).then(|| &code[i + prefix.len()..])
    })
}

/// The crate's top-level modules a file refers to.
fn uses(module: &[String], source: &str) -> BTreeSet<String> {
    let code = code(source);
    let mut found = BTreeSet::new();
    for rest in after_each(&code, "crate::", '$') {
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find("};").unwrap_or(group.len());
            found.extend(group_names(&group[..end]));
        } else {
            found.insert(ident_at(rest).to_string());
        }
    }
    // `super::` that climbs out of the top-level module names a sibling.
    for mut tail in after_each(&code, "super::", ':') {
        let mut depth = 1;
        while let Some(t) = tail.strip_prefix("super::") {
            depth += 1;
            tail = t;
        }
        // (Only names of top-level modules: `super::` inside an inline
        // `mod tests` climbs one level less than the file suggests.)
        let name = ident_at(tail);
        if depth >= module.len() && layer_of(name).is_some() {
            found.insert(name.to_string());
        }
    }
    found.retain(|m| !m.is_empty() && Some(m) != module.first());
    found
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for path in &files {
        let relative = path.strip_prefix(&src).expect("under src");
        let module = module_path(relative);
        let Some(top) = module.first() else { continue };
        if top == "bin" || top == "lib" {
            continue; // the binaries sit above everything; lib.rs declares
        }
        let Some(layer) = layer_of(top) else {
            wrong.push(format!(
                "{}: module `{top}` is not in LAYERS",
                relative.display()
            ));
            continue;
        };
        let source = std::fs::read_to_string(path).expect("read source");
        for used in uses(&module, &source) {
            checked += 1;
            match layer_of(&used) {
                Some(l) if l > layer => {}
                Some(l) => wrong.push(format!(
                    "{}: `{top}` uses `{used}`, which is {}",
                    relative.display(),
                    if l == layer { "beside it" } else { "above it" }
                )),
                None => wrong.push(format!(
                    "{}: uses `crate::{used}`, not in LAYERS",
                    relative.display()
                )),
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} uses found: is the reader broken?"
    );
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_reader_sees_every_form_of_use() {
    let module = vec!["net".to_string(), "stream".to_string()];
    let source = "use crate::metrics::Tally;\n\
                  use crate::{protocol::{Command, Reply}, sys, self};\n\
                  // crate::worker is only mentioned\n\
                  fn f() { crate::tls::Tls::default(); super::super::client::x(); super::Conn; }\n\
                  macro_rules! m { () => { $crate::hash::x() } }\n";
    let found: Vec<String> = uses(&module, source).into_iter().collect();
    assert_eq!(found, ["client", "metrics", "protocol", "sys", "tls"]);
}
