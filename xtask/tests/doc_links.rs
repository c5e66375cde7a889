//! Every relative link in the repository's Markdown resolves inside the
//! repository: the file or directory exists, and a `#fragment` into a
//! Markdown file names one of its headings (GitHub's slugs). Links with a
//! scheme (`https:`, `mailto:` ...) are not followed. The files are what
//! git lists (tracked, plus new files not ignored), so `target/` and
//! `.venv/` stay out.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// The Markdown GitHub renders: tables, footnotes, strikethrough, task lists.
fn options() -> Options {
    Options::ENABLE_TABLES
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
}

/// The targets of every link and image in `text`, in order.
fn links(text: &str) -> Vec<String> {
    Parser::new_ext(text, options())
        .filter_map(|event| match event {
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                Some(dest_url.into_string())
            }
            _ => None,
        })
        .collect()
}

/// GitHub's anchor for a heading's text: lower case, every character but
/// letters, digits, `-`, `_` and spaces dropped, spaces turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of every heading in `text`; a repeated slug gets `-1`,
/// `-2`... as on GitHub.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut heading: Option<String> = None;
    for event in Parser::new_ext(text, options()) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = &mut heading {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let Some(h) = heading.take() else { continue };
                // github-slugger: count up from the base slug until free.
                let base = slug(&h);
                let mut anchor = base.clone();
                while out.contains(&anchor) {
                    let n = seen.entry(base.clone()).or_insert(0);
                    *n += 1;
                    anchor = format!("{base}-{n}");
                }
                seen.insert(anchor.clone(), 0);
                out.insert(anchor);
            }
            _ => {}
        }
    }
    out
}

/// Whether `dest` names something outside the repository by URL scheme
/// (`https:`, `mailto:` ...), which this check does not follow.
fn has_scheme(dest: &str) -> bool {
    match dest.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// `path` with `.` and `..` resolved lexically; `None` when it climbs above
/// its root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// What is wrong with the links of `files` (paths relative to `root`), one
/// line per broken link: the file, the link and what is missing.
fn check(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut anchor_cache: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let text = match std::fs::read_to_string(root.join(file)) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}", file.display()));
                continue;
            }
        };
        let dir = file.parent().unwrap_or(Path::new(""));
        for dest in links(&text) {
            if has_scheme(&dest) {
                continue;
            }
            let mut broken = |what: String| {
                problems.push(format!("{}: link `{dest}`: {what}", file.display()));
            };
            let (path, fragment) = match dest.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (dest.as_str(), None),
            };
            let target = if path.is_empty() {
                Some(file.clone())
            } else if let Some(from_root) = path.strip_prefix('/') {
                normalize(Path::new(from_root))
            } else {
                normalize(&dir.join(path))
            };
            let Some(target) = target else {
                broken("points outside the repository".into());
                continue;
            };
            let full = root.join(&target);
            let inside = full
                .canonicalize()
                .ok()
                .zip(root.canonicalize().ok())
                .is_none_or(|(f, r)| f.starts_with(r));
            if !full.exists() {
                broken(format!("{} does not exist", target.display()));
                continue;
            }
            if !inside {
                broken(format!(
                    "{} resolves outside the repository",
                    target.display()
                ));
                continue;
            }
            let Some(fragment) = fragment.filter(|f| !f.is_empty()) else {
                continue;
            };
            // Fragments into other files (line anchors of source files)
            // are GitHub's business; only Markdown headings are checked.
            if !full.is_file() || target.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let known = anchor_cache.entry(target.clone()).or_insert_with(|| {
                std::fs::read_to_string(&full)
                    .map(|t| anchors(&t))
                    .unwrap_or_default()
            });
            if !known.contains(fragment) {
                broken(format!(
                    "no heading with anchor `#{fragment}` in {}",
                    target.display()
                ));
            }
        }
    }
    problems
}

/// The repository root.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Markdown files git knows of (tracked, and new ones not ignored),
/// relative to `root`; files deleted from the working tree are left out.
fn markdown_files(root: &Path) -> Option<Vec<PathBuf>> {
    let out = match Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            "*.md",
        ])
        .current_dir(root)
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            return testkit::missing(&format!(
                "`git ls-files` failed in {} ({}); the check needs a git checkout",
                root.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Err(_) => return testkit::missing("git is not installed"),
    };
    let files: BTreeSet<PathBuf> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .filter(|p| root.join(p).is_file())
        .collect();
    Some(files.into_iter().collect())
}

#[test]
fn every_relative_markdown_link_resolves_inside_the_repository() {
    let root = repo_root();
    let Some(files) = markdown_files(&root) else {
        return;
    };
    assert!(
        files.iter().any(|f| f == Path::new("README.md")),
        "git listed no README.md under {}: {files:?}",
        root.display()
    );
    let problems = check(&root, &files);
    assert!(
        problems.is_empty(),
        "{} broken link(s) in Markdown files:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The check itself finds what it should, on a repository made here.
#[test]
fn broken_links_are_reported_with_file_link_and_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    std::fs::create_dir_all(root.join("docs/sub")).unwrap();
    std::fs::write(root.join("docs/sub/keep.txt"), "x").unwrap();
    std::fs::write(dir.path().join("outside.md"), "# Outside\n").unwrap();
    std::fs::write(
        root.join("docs/guide.md"),
        "# Guide\n\n## Set up `config.toml` (version 1)\n\n## Repeat\n\n## Repeat\n\n\
         - [self](#guide) [code](#set-up-configtoml-version-1) [second](#repeat-1)\n\
         - [up](../README.md#top) [dir](sub/) [file](sub/keep.txt#L3) [abs](/README.md)\n\
         - [web](https://example.com/x.md) [mail](mailto:a@b.c)\n\
         - [gone](missing.md) [anchor](../README.md#nowhere) [escape](../../outside.md)\n\
         - ![img](img.png) [ref][r]\n\n[r]: sub/none.md\n\n\
         ```\n[in code](not-a-link.md)\n```\n",
    )
    .unwrap();
    std::fs::write(
        root.join("README.md"),
        "# Top\n\n[guide](docs/guide.md#repeat)\n",
    )
    .unwrap();
    let files = [PathBuf::from("README.md"), PathBuf::from("docs/guide.md")];
    assert_eq!(
        check(&root, &files),
        [
            "docs/guide.md: link `missing.md`: docs/missing.md does not exist",
            "docs/guide.md: link `../README.md#nowhere`: no heading with anchor `#nowhere` in README.md",
            "docs/guide.md: link `../../outside.md`: points outside the repository",
            "docs/guide.md: link `img.png`: docs/img.png does not exist",
            "docs/guide.md: link `sub/none.md`: docs/sub/none.md does not exist",
        ]
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("Configuration reference (config.toml, version 1)"),
        "configuration-reference-configtoml-version-1"
    );
    assert_eq!(slug("What it does with NATS"), "what-it-does-with-nats");
    assert_eq!(slug("Tests and benchmark"), "tests-and-benchmark");
    assert_eq!(slug("bucket_name -- a/b"), "bucket_name----ab");
    assert_eq!(
        anchors("# A\n## A\n## A\n"),
        BTreeSet::from(["a".to_string(), "a-1".into(), "a-2".into()])
    );
}
