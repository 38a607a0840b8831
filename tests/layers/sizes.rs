//! No room of `src/` grows too big to read: no file over [`MAX_FILE_LINES`] lines and no
//! function over [`MAX_FN_LINES`]. Prints the longest files and functions, so
//! `cargo test --test layers sizes -- --nocapture` shows where the code is heaviest.
//!
//! A function is counted from the line of its `fn` to the line of its closing brace. The reader
//! is deliberately simple: comments and the insides of string and character literals are
//! blanked first (so a `{` in a string or a doc comment counts nothing), then braces are
//! counted; a `fn NAME` opens a function at the next `{` of its signature, and a `;` first
//! (a trait's declaration) means it has no body. Macros that write functions are not seen.

use crate::source::{code_only, root, rust_files};

/// Longest a file of `src/` may be, in lines.
const MAX_FILE_LINES: usize = 700;
/// Longest a function of `src/` may be, in lines (from its `fn` line to its closing brace).
const MAX_FN_LINES: usize = 100;

/// One function: where it starts and how many lines it spans.
#[derive(Debug, PartialEq)]
struct Function {
    name: String,
    line: usize,
    lines: usize,
}

/// Every function with a body in `text`, nested ones too, in the order they close.
fn functions(text: &str) -> Vec<Function> {
    let code = code_only(text);
    let mut found = Vec::new();
    // Functions whose body is open: (name, first line, brace depth inside the body).
    let mut open: Vec<(String, usize, usize)> = Vec::new();
    // A `fn NAME` seen, its body not open yet: (name, line, unclosed parentheses and brackets).
    let mut pending: Option<(String, usize, i32)> = None;
    let mut depth = 0;
    for (number, line) in code.lines().enumerate() {
        let number = number + 1;
        let mut rest = line;
        let mut prev = ' ';
        while !rest.is_empty() {
            let word_starts = !(prev.is_alphanumeric() || prev == '_');
            if let Some(name) = fn_name(rest).filter(|_| word_starts) {
                pending = Some((name.to_owned(), number, 0));
                rest = &rest[rest.find(name).unwrap() + name.len()..];
                prev = 'x';
                continue;
            }
            let c = rest.chars().next().unwrap();
            rest = &rest[c.len_utf8()..];
            prev = c;
            match (c, pending.as_mut()) {
                ('(' | '[', Some((_, _, nesting))) => *nesting += 1,
                (')' | ']', Some((_, _, nesting))) => *nesting -= 1,
                // `fn f(buf: [u8; 4])` is still a signature; `fn f();` at nesting 0 has no body.
                (';', Some((_, _, 0))) => pending = None,
                ('{', _) => {
                    depth += 1;
                    if let Some((name, first, _)) = pending.take() {
                        open.push((name, first, depth));
                    }
                }
                ('}', _) => {
                    if open.last().is_some_and(|(_, _, d)| *d == depth) {
                        let (name, first, _) = open.pop().unwrap();
                        found.push(Function {
                            name,
                            line: first,
                            lines: number - first + 1,
                        });
                    }
                    depth -= 1;
                }
                _ => {}
            }
        }
    }
    found
}

/// `Some(NAME)` when `rest` starts with `fn` and a name: `fn f(`, not the pointer type
/// `fn(u8)`. The caller checks that `fn` starts a word.
fn fn_name(rest: &str) -> Option<&str> {
    let after = rest.strip_prefix("fn")?;
    if !after.starts_with(char::is_whitespace) {
        return None;
    }
    let after = after.trim_start();
    let len = after
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(after.len());
    (len > 0).then(|| &after[..len])
}

struct Measured {
    files: Vec<(usize, String)>,
    functions: Vec<(usize, String)>,
}

/// Every file of `src/` with its line count, and every function as `src/FILE.rs::NAME` (and
/// where it starts) with its length; longest first.
fn measure() -> Measured {
    let mut paths = Vec::new();
    rust_files(&root().join("src"), &mut paths);
    let mut files = Vec::new();
    let mut fns = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.strip_prefix(root()).unwrap().display().to_string();
        files.push((text.lines().count(), name.clone()));
        for f in functions(&text) {
            fns.push((f.lines, format!("{name}::{} (line {})", f.name, f.line)));
        }
    }
    files.sort_by(|a, b| b.cmp(a));
    fns.sort_by(|a, b| b.cmp(a));
    Measured {
        files,
        functions: fns,
    }
}

/// `src/store/redis.rs::start (line 817)` → `src/store/redis.rs::start`.
#[test]
fn no_file_of_src_is_over_700_lines_and_no_function_over_100() {
    let measured = measure();
    println!("longest files of src/ (limit {MAX_FILE_LINES}):");
    for (lines, name) in measured.files.iter().take(12) {
        println!("  {lines:5}  {name}");
    }
    println!("longest functions of src/ (limit {MAX_FN_LINES}):");
    for (lines, name) in measured.functions.iter().take(12) {
        println!("  {lines:5}  {name}");
    }

    let over_files = measured
        .files
        .iter()
        .filter(|(lines, _)| *lines > MAX_FILE_LINES);
    let over_fns = measured
        .functions
        .iter()
        .filter(|(lines, _)| *lines > MAX_FN_LINES);
    let over: Vec<(usize, &str)> = over_files
        .chain(over_fns)
        .map(|(lines, name)| (*lines, name.as_str()))
        .collect();
    let too_long: Vec<String> = over
        .iter()
        .map(|(lines, name)| format!("{name}: {lines} lines"))
        .collect();
    assert!(
        too_long.is_empty(),
        "over {MAX_FILE_LINES} lines a file or {MAX_FN_LINES} a function; split by what the \
         parts do:\n{}",
        too_long.join("\n")
    );
}

#[test]
fn the_reader_counts_bodies_and_skips_comments_strings_and_declarations() {
    let text = r##"
trait T {
    fn declared(&self, buf: [u8; 4]);
}
// fn commented() {
fn outer<'a>(x: &'a str) -> impl Fn() {
    let s = "} fn in_string() {";
    let r = r#"}"#;
    let c = '{';
    /* { /* nested */ } */
    fn inner() {
        let f: fn(u8) = drop;
    }
    move || ()
}
pub(crate) async fn last() {}
"##;
    let found = functions(text);
    let got: Vec<(&str, usize, usize)> = found
        .iter()
        .map(|f| (f.name.as_str(), f.line, f.lines))
        .collect();
    assert_eq!(got, [("inner", 11, 3), ("outer", 6, 10), ("last", 16, 1)]);
}
