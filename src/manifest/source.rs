//! A manifest's text and where every key and value of it sits, so that any error — syntax, type
//! or semantic — can point at a line and column.
//!
//! serde-saphyr reports positions for the errors it finds itself, but a rule checked after
//! deserialising (a duplicate service name, an unknown capability) only has a field path. This
//! index maps field paths back to positions; it is built from the same parser's event stream.

use std::collections::HashMap;

use regex::Regex;
use serde_saphyr::granit_parser::{Event, Parser};

use super::path::{FieldPath, Seg};

/// A 1-based line and column, and the byte range of the thing there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
    pub offset: usize,
    pub len: usize,
}

/// One manifest file as read.
#[derive(Clone, Debug)]
pub struct Source {
    /// The name shown in messages: the path as given, or `<stdin>`.
    pub name: String,
    pub text: String,
    /// The folder `@pkg:` paths are relative to; `None` for standard input.
    pub dir: Option<std::path::PathBuf>,
    index: SpanIndex,
}

impl Source {
    pub fn new(
        name: impl Into<String>,
        text: impl Into<String>,
        dir: Option<std::path::PathBuf>,
    ) -> Self {
        let text = indent_comments_in_block_scalars(&text.into());
        let index = SpanIndex::build(&text);
        Source {
            name: name.into(),
            text,
            dir,
            index,
        }
    }

    /// Where the value at `path` is. Falls back to the nearest ancestor that exists.
    pub fn value_pos(&self, path: &FieldPath) -> Pos {
        let mut p = path.clone();
        loop {
            if let Some(pos) = self.index.values.get(&p) {
                return *pos;
            }
            if p.is_root() {
                return Pos {
                    line: 1,
                    column: 1,
                    offset: 0,
                    len: 0,
                };
            }
            p = p.parent();
        }
    }

    /// Where the key that ends `path` is written (for unknown keys); the value's position otherwise.
    pub fn key_pos(&self, path: &FieldPath) -> Pos {
        self.index
            .keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.value_pos(path))
    }

    /// Position from a 1-based line and column (for errors the YAML parser reports itself).
    pub fn pos_at(&self, line: usize, column: usize) -> Pos {
        let offset = self
            .text
            .split_inclusive('\n')
            .take(line.saturating_sub(1))
            .map(str::len)
            .sum::<usize>()
            + column.saturating_sub(1);
        Pos {
            line,
            column,
            offset: offset.min(self.text.len()),
            len: 0,
        }
    }
}

/// LinuxKit's parser (go-yaml) accepts a `#` line at column 0 inside a literal block scalar,
/// as in its own `examples/static-ip.yml`:
/// ```yaml
///     contents: |
/// #      domain test.local
///       nameserver 10.10.1.101
/// ```
/// Strict YAML ends the scalar there and then fails on the next line. So that such manifests
/// build unchanged, a column-0 comment line followed by more of the scalar is indented to the
/// scalar's indentation (it becomes a line of the contents). Line numbers do not move.
///
/// Linear in the input: the next line that is neither blank nor a stray comment is computed for
/// every line in one backward pass (instead of a scan ahead from each stray line), and the
/// indentation added is capped at the input's size, so the output is at most twice the input
/// (past the cap, lines stay as written and strict YAML reports them).
fn indent_comments_in_block_scalars(text: &str) -> String {
    let started = std::time::Instant::now();
    let header = Regex::new(r"(^|[\s:-])[|>][+-]?[1-9]?[+-]?\s*(#.*)?$").expect("static regex");
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let blank = |l: &str| l.trim().is_empty();
    let stray = |l: &str| l.starts_with('#');
    // next_content[i]: the indentation of the first line at or after i that is neither blank
    // nor a stray comment, if there is one.
    let mut next_content: Vec<Option<usize>> = vec![None; lines.len() + 1];
    for i in (0..lines.len()).rev() {
        let l = lines[i];
        next_content[i] = if !blank(l) && !stray(l) {
            Some(indent(l))
        } else {
            next_content[i + 1]
        };
    }
    let mut budget = text.len();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < lines.len() {
        out.push_str(lines[i]);
        if !header.is_match(lines[i].trim_end()) {
            i += 1;
            continue;
        }
        let parent = indent(lines[i]);
        // The scalar's indentation is that of its first line that is neither blank nor a stray comment.
        let content = next_content[i + 1].filter(|n| *n > parent);
        i += 1;
        let Some(content) = content else { continue };
        while i < lines.len() {
            let l = lines[i];
            if stray(l) {
                let continues = next_content[i + 1].is_some_and(|n| n >= content);
                if !continues || content > budget {
                    break;
                }
                budget -= content;
                out.extend(std::iter::repeat_n(' ', content));
                out.push_str(l);
            } else if blank(l) || indent(l) >= content {
                out.push_str(l);
            } else {
                break;
            }
            i += 1;
        }
    }
    // `scripts/bench prepass` reads this line.
    tracing::debug!(
        "go-yaml pre-pass: {} bytes in {:.3} s",
        text.len(),
        started.elapsed().as_secs_f64()
    );
    out
}

#[derive(Clone, Debug, Default)]
struct SpanIndex {
    values: HashMap<FieldPath, Pos>,
    keys: HashMap<FieldPath, Pos>,
}

enum Frame {
    Map {
        path: FieldPath,
        key: Option<String>,
    },
    Seq {
        path: FieldPath,
        next: usize,
    },
}

impl SpanIndex {
    /// Walks the event stream once. A document that does not parse yields a partial index; the
    /// deserialiser reports the syntax error with its own position.
    fn build(text: &str) -> Self {
        let mut index = SpanIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let start = span.start;
            let end = span.end;
            let pos = Pos {
                line: start.line(),
                column: start.col() + 1,
                offset: start.byte_offset().unwrap_or(0),
                len: end
                    .byte_offset()
                    .unwrap_or(0)
                    .saturating_sub(start.byte_offset().unwrap_or(0)),
            };
            match event {
                Event::Scalar(value, ..) => {
                    // A scalar in key position of a mapping is a key, not a value.
                    if let Some(Frame::Map { path, key }) = stack.last_mut()
                        && key.is_none()
                    {
                        index.keys.insert(path.key(&value), pos);
                        *key = Some(value.into_owned());
                        continue;
                    }
                    let here = index.child_path(&mut stack);
                    index.values.insert(here, pos);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let here = index.child_path(&mut stack);
                    index.values.entry(here.clone()).or_insert(pos);
                    stack.push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Map {
                            path: here,
                            key: None,
                        }
                    } else {
                        Frame::Seq {
                            path: here,
                            next: 0,
                        }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Alias(_) => {
                    let here = index.child_path(&mut stack);
                    index.values.insert(here, pos);
                }
                _ => {}
            }
        }
        index
    }

    /// The path of the node that starts now, advancing the parent frame.
    fn child_path(&self, stack: &mut [Frame]) -> FieldPath {
        match stack.last_mut() {
            None => FieldPath::root(),
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => path.key(&k),
                // A complex (non-scalar) key: give it a path nobody asks for.
                None => path.key("?"),
            },
            Some(Frame::Seq { path, next }) => {
                let p = path.index(*next);
                *next += 1;
                p
            }
        }
    }
}

impl FieldPath {
    /// The first segment, when it is a key (the top-level section).
    pub fn section(&self) -> Option<&str> {
        match self.0.first() {
            Some(Seg::Key(k)) => Some(k),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "kernel:\n  image: linuxkit/kernel:6.6\nservices:\n  - name: getty\n    image: x\n    capabilities:\n      - CAP_A\n      - CAP_B\n";

    #[test]
    fn finds_values_and_keys() {
        let s = Source::new("t.yml", DOC, None);
        let p = FieldPath::root()
            .key("services")
            .index(0)
            .key("capabilities")
            .index(1);
        let pos = s.value_pos(&p);
        assert_eq!((pos.line, pos.column), (8, 9));
        let k = s.key_pos(&FieldPath::root().key("kernel").key("image"));
        assert_eq!((k.line, k.column), (2, 3));
        assert_eq!(&DOC[pos.offset..pos.offset + pos.len], "CAP_B");
    }

    #[test]
    fn column_zero_comments_inside_block_scalars_are_kept_as_content() {
        let text = "files:\n  - path: x\n    contents: |\n#      domain x\n      nameserver 1\n# trailing\nvolumes: []\n";
        let s = Source::new("t.yml", text, None);
        assert_eq!(
            s.text,
            "files:\n  - path: x\n    contents: |\n      #      domain x\n      nameserver 1\n# trailing\nvolumes: []\n"
        );
        let plain = "a: |\n  x\n# c\nb: 1\n";
        assert_eq!(Source::new("t.yml", plain, None).text, plain);
    }

    #[test]
    fn the_go_yaml_pre_pass_output_stays_within_twice_its_input() {
        // Many column-0 comments before a deeply indented line: indenting each of them to it
        // would make the output quadratic in the input (and the look-ahead from each comment was).
        let mut text = String::from("a: |\n");
        for _ in 0..20_000 {
            text.push_str("#\n");
        }
        text.push_str(&" ".repeat(40_000));
        text.push_str("x\n");
        let out = indent_comments_in_block_scalars(&text);
        assert!(
            out.len() <= 2 * text.len(),
            "{} > 2 x {}",
            out.len(),
            text.len()
        );
        assert_eq!(
            out.lines().count(),
            text.lines().count(),
            "line numbers do not move"
        );
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let s = Source::new("t.yml", DOC, None);
        let pos = s.value_pos(&FieldPath::root().key("services").index(0).key("nope"));
        assert_eq!(pos.line, 4);
    }
}
