//! docs/architecture.md is the code map: every path it names must exist.
//!
//! In its tree, an entry's path is its first word joined to the entry above
//! it with less indentation; a file name in an entry's description is
//! looked up in that entry's folder (or its `src/`), or from the root. In
//! the prose, a path in backticks is looked up from the root or `vmm/src`.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A word that names a file or folder: lower-case path characters with a
/// `/`, or a file name with an extension covm's tree uses.
fn path_like(word: &str) -> bool {
    let word = word.trim_end_matches(['.', ',', ';', ':']);
    let chars = !word.is_empty()
        && !word.starts_with('/')
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-./".contains(c));
    let file = [".rs", ".md", ".py", ".yaml", ".json", ".s"]
        .iter()
        .any(|ext| word.ends_with(ext));
    chars && (word.contains('/') || file)
}

/// The path-like words of `text`, without surrounding punctuation.
fn paths_in(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || "()`,;".contains(c))
        .map(|w| w.trim_end_matches(['.', ':']).to_string())
        .filter(|w| path_like(w))
        .collect()
}

fn exists_under(bases: &[PathBuf], name: &str) -> bool {
    bases.iter().any(|base| base.join(name).exists())
}

#[test]
fn every_path_the_code_map_names_exists() {
    let root = root();
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("docs/architecture.md");
    let (before, rest) = doc.split_once("```\n").expect("the tree's code block");
    let (tree, prose) = rest.split_once("```\n").expect("the tree's code block ends");

    let mut missing = Vec::new();
    // (indent, path) of the entries above the current one.
    let mut stack: Vec<(usize, PathBuf)> = Vec::new();
    let mut entries = 0;
    for line in tree.lines() {
        let indent = line.len() - line.trim_start().len();
        let Some((first, description)) = line
            .trim_start()
            .split_once(char::is_whitespace)
            .or(Some((line.trim(), "")))
        else {
            continue;
        };
        let folder = if indent < 20 && !first.is_empty() {
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            let path = stack.last().map_or(root.clone(), |(_, p)| p.clone()).join(first);
            entries += 1;
            if !path.exists() {
                missing.push(format!("tree entry {}", path.strip_prefix(&root).unwrap().display()));
            }
            stack.push((indent, path.clone()));
            path
        } else {
            match stack.last() {
                Some((_, path)) => path.clone(),
                None => continue,
            }
        };
        let text = if indent < 20 { description } else { line };
        let folder = if folder.is_dir() {
            folder
        } else {
            folder.parent().unwrap().to_path_buf()
        };
        let bases = [folder.clone(), folder.join("src"), root.clone()];
        for name in paths_in(text) {
            if !exists_under(&bases, &name) {
                missing.push(format!(
                    "{name} (named for {})",
                    folder.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        entries > 40,
        "only {entries} tree entries read: has the tree's layout changed?"
    );

    let bases = [root.clone(), root.join("vmm/src")];
    let mut named = 0;
    for text in [before, prose] {
        for quoted in text.split('`').skip(1).step_by(2) {
            if path_like(quoted) {
                named += 1;
                if !exists_under(&bases, quoted) {
                    missing.push(format!("`{quoted}` in the prose"));
                }
            }
        }
    }
    assert!(named > 10, "only {named} paths found in the prose");
    assert!(
        missing.is_empty(),
        "docs/architecture.md names paths that do not exist:\n{}",
        missing.join("\n")
    );
}

/// The check itself catches a wrong name (so it cannot pass vacuously).
#[test]
fn a_missing_path_is_seen() {
    assert!(path_like("vmm/src/nowhere.rs") && path_like("dirty/") && path_like("exit.rs"));
    assert!(!path_like("ELF/PVH") && !path_like("/dev/kvm") && !path_like("SIGINT/SIGTERM"));
    assert!(!exists_under(&[root()], "vmm/src/nowhere.rs"));
    assert_eq!(
        paths_in("the loop (mod.rs: owns), errors (`exit.rs`)."),
        ["mod.rs", "exit.rs"]
    );
}
