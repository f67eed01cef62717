//! MiniMalloc's CSV format: `id,lower,upper,size[,offset]`, one buffer a row, lifetimes half-open.
//!
//! Extensions, by header name: `alignment` (offsets must be multiples of it) and `fixed_offset` (the
//! buffer must be placed exactly there). Columns may come in any order; blank lines are skipped.
//!
//! This is the one CSV reader of the project: the CLI, the Python package (through
//! `model_opt._native.read_csv`) and the Rust tests all read buffers here. It reads RFC 4180 text:
//! fields may be quoted (`"a,b"`, a doubled `""` inside is one quote, and a quoted field may span
//! lines), lines may end in LF, CRLF or CR alone, and a UTF-8 byte-order mark at the start is
//! skipped. Errors name the file and the line where the offending row starts.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use thiserror::Error;

use super::problem::{check_alignment, Buffer, Bytes, Interval, Problem, Solution, MAX_VALUE};
use super::validate::{validate, InvalidPlan};

/// What was wrong with a CSV file, and where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CsvError {
    #[error("{file}: cannot read: {reason}")]
    Io { file: String, reason: String },
    #[error("{file}: empty file: expected a header `id,lower,upper,size`")]
    Empty { file: String },
    #[error("{file}:{line}: {message}")]
    Line {
        file: String,
        line: usize,
        message: String,
    },
}

/// A parsed CSV file: the problem, the offsets if the file carried an `offset` column, and the
/// line each buffer's row starts on (1-based, the header being line 1 unless blank lines precede it).
#[derive(Debug, Clone)]
pub struct ParsedCsv {
    pub problem: Problem,
    pub offsets: Option<Vec<Bytes>>,
    pub lines: Vec<usize>,
    /// Whether the file has an `alignment` column, and a `fixed_offset` column.
    pub has_alignment: bool,
    pub has_fixed_offset: bool,
}

const REQUIRED: [&str; 4] = ["id", "lower", "upper", "size"];
const OPTIONAL: [&str; 3] = ["offset", "alignment", "fixed_offset"];

/// Longest id accepted, in bytes: ids name buffers in one-line messages.
pub const MAX_ID_BYTES: usize = 1024;

pub fn read_csv_file(path: &Path) -> Result<ParsedCsv, CsvError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| CsvError::Io {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        CsvError::Line {
            file: file.clone(),
            line: 1 + line_breaks(&bytes[..at]),
            message: format!("not UTF-8 text (invalid byte 0x{:02x})", bytes[at]),
        }
    })?;
    parse_csv(&text, &file)
}

/// Line breaks in `bytes` (CRLF, CR and LF each count once).
fn line_breaks(bytes: &[u8]) -> usize {
    let mut n = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')) {
            n += 1;
        }
    }
    n
}

/// Parses CSV text; `file` names the source in error messages.
pub fn parse_csv(text: &str, file: &str) -> Result<ParsedCsv, CsvError> {
    let err = |line: usize, message: String| CsvError::Line {
        file: file.to_string(),
        line,
        message,
    };
    let mut records = Records::new(text);
    let mut cells: Vec<Cow<'_, str>> = Vec::new();
    let Some(header_line) = records.next_into(&mut cells).map_err(|(l, m)| err(l, m))? else {
        return Err(CsvError::Empty {
            file: file.to_string(),
        });
    };
    let columns = Columns::from_header(&cells).map_err(|m| err(header_line, m))?;

    let mut buffers = Vec::new();
    let mut lines = Vec::new();
    let mut offsets = columns.offset.map(|_| Vec::new());
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut total_size: u64 = 0;
    while let Some(line) = records.next_into(&mut cells).map_err(|(l, m)| err(l, m))? {
        if cells.len() != columns.count {
            return Err(err(
                line,
                format!(
                    "expected {} columns ({}), found {}",
                    columns.count,
                    columns.header,
                    cells.len()
                ),
            ));
        }
        let id = cells[columns.id].as_ref();
        if id.is_empty() {
            return Err(err(line, "empty id".into()));
        }
        if id.len() > MAX_ID_BYTES {
            return Err(err(
                line,
                format!(
                    "id '{}...' is {} bytes long (at most {MAX_ID_BYTES})",
                    prefix(id, 40),
                    id.len()
                ),
            ));
        }
        if let Some(first) = seen.insert(id.to_string(), line) {
            return Err(err(
                line,
                format!("duplicate id '{id}' (first on line {first})"),
            ));
        }
        let number =
            |col: usize, name: &str| parse_number(&cells[col], name).map_err(|m| err(line, m));
        let lower = number(columns.lower, "lower")?;
        let upper = number(columns.upper, "upper")?;
        let size = number(columns.size, "size")?;
        let lifetime = Interval::new(lower, upper).ok_or_else(|| {
            err(
                line,
                format!("buffer '{id}': upper {upper} must be greater than lower {lower} (lifetimes are [lower, upper))"),
            )
        })?;
        total_size = total_size.saturating_add(size);
        if total_size > MAX_VALUE {
            return Err(err(
                line,
                format!("sizes add up to more than {MAX_VALUE} bytes"),
            ));
        }
        let mut buffer = Buffer::new(id, lifetime, Bytes(size));
        if let Some(col) = columns.alignment {
            let alignment = number(col, "alignment")?;
            check_alignment(alignment).map_err(|m| err(line, format!("buffer '{id}': {m}")))?;
            buffer.alignment = Bytes(alignment);
        }
        if let Some(col) = columns.fixed_offset {
            if !cells[col].is_empty() {
                let fixed = Bytes(number(col, "fixed_offset")?);
                if !fixed.is_aligned(buffer.alignment) {
                    return Err(err(
                        line,
                        format!("buffer '{id}': fixed_offset {fixed} is not a multiple of its alignment {}", buffer.alignment),
                    ));
                }
                buffer.fixed_offset = Some(fixed);
            }
        }
        if let (Some(col), Some(offsets)) = (columns.offset, offsets.as_mut()) {
            offsets.push(Bytes(number(col, "offset")?));
        }
        buffers.push(buffer);
        lines.push(line);
    }
    let problem = Problem::new(buffers);
    check_fixed_offsets(&problem, &seen).map_err(|(l, m)| err(l, m))?;
    Ok(ParsedCsv {
        problem,
        offsets,
        lines,
        has_alignment: columns.alignment.is_some(),
        has_fixed_offset: columns.fixed_offset.is_some(),
    })
}

/// Buffers pinned at fixed offsets that share a byte while both live can never be placed: say so
/// at the line of the later row, naming the other's line.
fn check_fixed_offsets(
    problem: &Problem,
    lines: &HashMap<String, usize>,
) -> Result<(), (usize, String)> {
    let fixed: Vec<Buffer> = problem
        .buffers
        .iter()
        .filter(|b| b.fixed_offset.is_some())
        .cloned()
        .collect();
    if fixed.len() < 2 {
        return Ok(());
    }
    let offsets = fixed.iter().filter_map(|b| b.fixed_offset).collect();
    let sub = Problem::new(fixed);
    let solution = Solution::from_offsets(&sub, offsets);
    match validate(&sub, &solution) {
        Err(InvalidPlan::Overlap {
            a,
            b,
            time_start,
            time_end,
            byte_start,
            byte_end,
        }) => {
            let (la, lb) = (lines[&a], lines[&b]);
            let ((first, l1), (second, l2)) = if la <= lb {
                ((a, la), (b, lb))
            } else {
                ((b, lb), (a, la))
            };
            Err((
                l2,
                format!(
                    "buffer '{second}': its fixed_offset shares bytes [{byte_start}, {byte_end}) with \
                     buffer '{first}' (line {l1}, also fixed) while both are live (in [{time_start}, {time_end}))"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The first `n` characters of `s`.
fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// RFC 4180 records of a text, one at a time, each with the line it starts on.
struct Records<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> Records<'a> {
    fn new(text: &'a str) -> Records<'a> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Records {
            text,
            pos: 0,
            line: 1,
        }
    }

    /// Reads the next non-blank record's cells into `cells` and returns the line it starts on;
    /// `None` at the end of the text. Unquoted cells are trimmed of spaces and tabs; quoted ones
    /// keep what is between the quotes.
    fn next_into(
        &mut self,
        cells: &mut Vec<Cow<'a, str>>,
    ) -> Result<Option<usize>, (usize, String)> {
        let bytes = self.text.as_bytes();
        loop {
            if self.pos >= bytes.len() {
                return Ok(None);
            }
            let start_line = self.line;
            cells.clear();
            let mut any_quoted = false;
            loop {
                while matches!(bytes.get(self.pos), Some(b' ' | b'\t')) {
                    self.pos += 1;
                }
                if bytes.get(self.pos) == Some(&b'"') {
                    any_quoted = true;
                    cells.push(self.quoted()?);
                    while matches!(bytes.get(self.pos), Some(b' ' | b'\t')) {
                        self.pos += 1;
                    }
                    if !matches!(bytes.get(self.pos), None | Some(b',' | b'\r' | b'\n')) {
                        return Err((
                            self.line,
                            "unexpected text after a closing quote (a quote inside a quoted field is written \"\")".into(),
                        ));
                    }
                } else {
                    let from = self.pos;
                    while !matches!(bytes.get(self.pos), None | Some(b',' | b'\r' | b'\n')) {
                        self.pos += 1;
                    }
                    cells.push(Cow::Borrowed(
                        self.text[from..self.pos].trim_end_matches([' ', '\t']),
                    ));
                }
                match bytes.get(self.pos) {
                    Some(b',') => self.pos += 1,
                    _ => {
                        self.end_of_line();
                        break;
                    }
                }
            }
            if cells.len() == 1 && cells[0].is_empty() && !any_quoted {
                continue; // a blank line
            }
            return Ok(Some(start_line));
        }
    }

    /// Steps over a line break (CRLF, LF or CR) if one is here.
    fn end_of_line(&mut self) {
        let bytes = self.text.as_bytes();
        match bytes.get(self.pos) {
            Some(b'\r') => {
                self.pos += 1;
                if bytes.get(self.pos) == Some(&b'\n') {
                    self.pos += 1;
                }
                self.line += 1;
            }
            Some(b'\n') => {
                self.pos += 1;
                self.line += 1;
            }
            _ => {}
        }
    }

    /// A quoted field, `self.pos` on its opening quote; leaves `self.pos` after the closing one.
    fn quoted(&mut self) -> Result<Cow<'a, str>, (usize, String)> {
        let bytes = self.text.as_bytes();
        let opened = self.line;
        self.pos += 1;
        let mut from = self.pos;
        let mut owned: Option<String> = None;
        loop {
            match bytes.get(self.pos) {
                None => {
                    return Err((
                        opened,
                        "a quoted field is never closed (a quote opened here has no closing quote)"
                            .into(),
                    ))
                }
                Some(b'"') if bytes.get(self.pos + 1) == Some(&b'"') => {
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(&self.text[from..=self.pos]);
                    self.pos += 2;
                    from = self.pos;
                }
                Some(b'"') => {
                    let piece = &self.text[from..self.pos];
                    self.pos += 1;
                    return Ok(match owned {
                        Some(mut s) => {
                            s.push_str(piece);
                            Cow::Owned(s)
                        }
                        None => Cow::Borrowed(piece),
                    });
                }
                Some(b'\r' | b'\n') => {
                    let before = self.pos;
                    self.end_of_line();
                    debug_assert!(self.pos > before);
                }
                Some(_) => self.pos += 1,
            }
        }
    }
}

/// Where each known column sits in a row.
struct Columns {
    id: usize,
    lower: usize,
    upper: usize,
    size: usize,
    offset: Option<usize>,
    alignment: Option<usize>,
    fixed_offset: Option<usize>,
    count: usize,
    header: String,
}

impl Columns {
    fn from_header(cells: &[Cow<'_, str>]) -> Result<Columns, String> {
        let names: Vec<String> = cells.iter().map(|c| c.to_ascii_lowercase()).collect();
        if names.iter().any(|n| n.parse::<i128>().is_ok()) {
            return Err(format!(
                "the first line must be a header naming the columns ({}), found a data row",
                REQUIRED.join(",")
            ));
        }
        for (i, name) in names.iter().enumerate() {
            if !REQUIRED.contains(&name.as_str()) && !OPTIONAL.contains(&name.as_str()) {
                return Err(format!(
                    "unknown column '{name}' (known: {}, {})",
                    REQUIRED.join(","),
                    OPTIONAL.join(",")
                ));
            }
            if names[..i].contains(name) {
                return Err(format!("column '{name}' appears twice"));
            }
        }
        let find = |n: &str| names.iter().position(|c| c == n);
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|n| find(n).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "missing column(s) {} in header (expected {})",
                missing.join(", "),
                REQUIRED.join(",")
            ));
        }
        Ok(Columns {
            id: find("id").unwrap_or_default(),
            lower: find("lower").unwrap_or_default(),
            upper: find("upper").unwrap_or_default(),
            size: find("size").unwrap_or_default(),
            offset: find("offset"),
            alignment: find("alignment"),
            fixed_offset: find("fixed_offset"),
            count: names.len(),
            header: names.join(","),
        })
    }
}

/// A non-negative integer of at most [`MAX_VALUE`]; the message says which of the three it is not.
fn parse_number(cell: &str, name: &str) -> Result<u64, String> {
    let digits = cell.strip_prefix(['+', '-']).unwrap_or(cell);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{name} '{cell}' is not an integer"));
    }
    let is_zero = digits.bytes().all(|b| b == b'0');
    if cell.starts_with('-') && !is_zero {
        return Err(format!("{name} {cell} is negative"));
    }
    let significant = digits.trim_start_matches('0');
    match significant.parse::<u64>() {
        Ok(value) if value <= MAX_VALUE => Ok(value),
        _ if is_zero => Ok(0),
        _ => Err(format!(
            "{name} {cell} is too large (at most {MAX_VALUE} = 2^53)"
        )),
    }
}

/// A field as CSV writes it: quoted when it holds a comma, a quote, a line break or edge spaces
/// (which the reader would otherwise trim), its quotes doubled.
fn field(s: &str) -> Cow<'_, str> {
    let plain = !s.contains([',', '"', '\r', '\n'])
        && !s.starts_with([' ', '\t'])
        && !s.ends_with([' ', '\t']);
    if plain {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    }
}

/// Writes `id,lower,upper,size[,alignment][,fixed_offset],offset`.
pub fn write_solution_csv(problem: &Problem, solution: &Solution) -> String {
    let with_alignment = problem.buffers.iter().any(|b| b.alignment.0 > 1);
    let with_fixed = problem.buffers.iter().any(|b| b.fixed_offset.is_some());
    let mut out = String::from("id,lower,upper,size");
    if with_alignment {
        out.push_str(",alignment");
    }
    if with_fixed {
        out.push_str(",fixed_offset");
    }
    out.push_str(",offset\n");
    for (b, offset) in problem.buffers.iter().zip(&solution.offsets) {
        let _ = write!(
            out,
            "{},{},{},{}",
            field(&b.name),
            b.lifetime.start,
            b.lifetime.end,
            b.size
        );
        if with_alignment {
            let _ = write!(out, ",{}", b.alignment);
        }
        if with_fixed {
            match b.fixed_offset {
                Some(f) => {
                    let _ = write!(out, ",{f}");
                }
                None => out.push(','),
            }
        }
        let _ = writeln!(out, ",{offset}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_error(text: &str) -> (usize, String) {
        match parse_csv(text, "t.csv") {
            Err(CsvError::Line { line, message, .. }) => (line, message),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn reads_minimalloc_rows_and_round_trips() {
        let text = "id,lower,upper,size\nb1,0,3,4\nb2,3,9,4\n";
        let parsed = parse_csv(text, "t.csv").unwrap();
        assert_eq!(parsed.problem.len(), 2);
        assert!(parsed.offsets.is_none());
        let sol = Solution::from_offsets(&parsed.problem, vec![Bytes(0), Bytes(0)]);
        let out = write_solution_csv(&parsed.problem, &sol);
        assert_eq!(out, "id,lower,upper,size,offset\nb1,0,3,4,0\nb2,3,9,4,0\n");
        let again = parse_csv(&out, "out.csv").unwrap();
        assert_eq!(again.problem, parsed.problem);
        assert_eq!(again.offsets, Some(sol.offsets));
    }

    #[test]
    fn reports_each_bad_input_with_its_line() {
        assert!(matches!(
            parse_csv("", "t.csv"),
            Err(CsvError::Empty { .. })
        ));
        assert_eq!(line_error("id,lower,size\n").0, 1);
        assert!(line_error("id,lower,size\n")
            .1
            .contains("missing column(s) upper"));
        assert!(line_error("0,1,2,3\n").1.contains("header"));
        let (line, msg) = line_error("id,lower,upper,size\na,0,1,2\nb,0,1\n");
        assert_eq!(line, 3);
        assert!(msg.contains("expected 4 columns"), "{msg}");
        assert!(line_error("id,lower,upper,size\na,0,1,x\n")
            .1
            .contains("size 'x' is not an integer"));
        assert!(line_error("id,lower,upper,size\na,0,1,-5\n")
            .1
            .contains("size -5 is negative"));
        assert!(line_error("id,lower,upper,size\na,4,4,1\n")
            .1
            .contains("upper 4 must be greater than lower 4"));
        let (line, msg) = line_error("id,lower,upper,size\na,0,1,1\na,1,2,1\n");
        assert_eq!(line, 3);
        assert!(msg.contains("duplicate id 'a' (first on line 2)"), "{msg}");
    }

    #[test]
    fn reads_alignment_and_fixed_offsets() {
        let text = "size,id,upper,lower,alignment,fixed_offset\n10,a,2,0,8,16\n10,b,2,0,8,\n";
        let p = parse_csv(text, "t.csv").unwrap().problem;
        assert_eq!(p.buffers[0].alignment, Bytes(8));
        assert_eq!(p.buffers[0].fixed_offset, Some(Bytes(16)));
        assert_eq!(p.buffers[1].fixed_offset, None);
        assert!(
            line_error("id,lower,upper,size,alignment,fixed_offset\na,0,1,1,8,4\n")
                .1
                .contains("not a multiple")
        );
    }

    #[test]
    fn quoted_fields_are_unquoted_and_may_span_lines() {
        let text = "id,lower,upper,size\n\"a\",0,1,2\n\"b,\"\"c\"\"\",0,1,2\n\"multi\nline\",1,\"3\",4\nd,0,1,1\n";
        let parsed = parse_csv(text, "t.csv").unwrap();
        let names: Vec<&str> = parsed
            .problem
            .buffers
            .iter()
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b,\"c\"", "multi\nline", "d"]);
        assert_eq!(parsed.lines, [2, 3, 4, 6]);
        // Written back quoted where needed, and read back the same.
        let sol = Solution::from_offsets(&parsed.problem, vec![Bytes(0); 4]);
        let out = write_solution_csv(&parsed.problem, &sol);
        assert!(out.contains("\n\"b,\"\"c\"\"\",0,1,2,0\n"), "{out}");
        assert_eq!(parse_csv(&out, "o.csv").unwrap().problem, parsed.problem);
        assert_eq!(
            line_error("id,lower,upper,size\na,0,1,2\n\"b,0,1,2\nc,0,1,2\n"),
            (
                3,
                "a quoted field is never closed (a quote opened here has no closing quote)".into()
            )
        );
        assert!(line_error("id,lower,upper,size\n\"a\"x,0,1,2\n")
            .1
            .contains("unexpected text after a closing quote"));
    }

    #[test]
    fn accepts_a_byte_order_mark_and_every_line_ending() {
        for text in [
            "\u{feff}id,lower,upper,size\na,0,1,2\nb,1,2,3\n",
            "id,lower,upper,size\r\na,0,1,2\r\nb,1,2,3\r\n",
            "id,lower,upper,size\ra,0,1,2\rb,1,2,3",
            "id,lower,upper,size\r\ra,0,1,2\n\nb,1,2,3\r",
        ] {
            let parsed = parse_csv(text, "t.csv").unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(parsed.problem.len(), 2, "{text:?}");
            assert_eq!(parsed.problem.buffers[0].name, "a");
        }
        // Line numbers count CR-only breaks too.
        assert_eq!(line_error("id,lower,upper,size\ra,0,1,2\rb,0,1\r").0, 3);
    }

    #[test]
    fn numbers_too_large_say_so_with_the_limit() {
        let (line, msg) =
            line_error("id,lower,upper,size\na,0,1,10000000000000000000000000000000000000000\n");
        assert_eq!(line, 2);
        assert_eq!(
            msg,
            "size 10000000000000000000000000000000000000000 is too large (at most 9007199254740992 = 2^53)"
        );
        assert_eq!(
            line_error("id,lower,upper,size\na,0,1,9007199254740993\n").1,
            "size 9007199254740993 is too large (at most 9007199254740992 = 2^53)"
        );
        assert_eq!(
            line_error("id,lower,upper,size\na,-100000000000000000000000000000000000000000,1,1\n")
                .1,
            "lower -100000000000000000000000000000000000000000 is negative"
        );
        assert_eq!(
            line_error("id,lower,upper,size\na,0,1,1e5\n").1,
            "size '1e5' is not an integer"
        );
        let p = parse_csv(
            "id,lower,upper,size\na,-0,+1,0009007199254740992\n",
            "t.csv",
        )
        .unwrap();
        assert_eq!(p.problem.buffers[0].size, Bytes(MAX_VALUE));
    }

    #[test]
    fn alignments_must_be_powers_of_two_up_to_one_gib() {
        let head = "id,lower,upper,size,alignment\n";
        assert_eq!(
            line_error(&format!("{head}a,0,1,1,9007199254740992\n")).1,
            "buffer 'a': alignment 9007199254740992 is too large (at most 1073741824, 1 GiB)"
        );
        assert_eq!(
            line_error(&format!("{head}a,0,1,1,24\n")).1,
            "buffer 'a': alignment 24 is not a power of two (1, 2, 4, ..., 1073741824)"
        );
        assert!(line_error(&format!("{head}a,0,1,1,0\n"))
            .1
            .contains("alignment 0 is not a power of two"));
        let p = parse_csv(&format!("{head}a,0,1,1,1073741824\n"), "t.csv").unwrap();
        assert_eq!(p.problem.buffers[0].alignment, Bytes(1 << 30));
    }

    #[test]
    fn conflicting_fixed_offsets_name_both_lines() {
        let text = "id,lower,upper,size,fixed_offset\na,0,4,8,0\nfree,0,9,1,\nb,2,6,8,4\n";
        let (line, msg) = line_error(text);
        assert_eq!(line, 4);
        assert_eq!(
            msg,
            "buffer 'b': its fixed_offset shares bytes [4, 8) with buffer 'a' (line 2, also fixed) \
             while both are live (in [2, 4))"
        );
        match parse_csv(text, "t.csv") {
            Err(e) => assert!(e.to_string().starts_with("t.csv:4: buffer 'b'"), "{e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn long_ids_and_bad_bytes_are_refused_with_their_line() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let (line, msg) = line_error(&format!("id,lower,upper,size\n{long},0,1,1\n"));
        assert_eq!(line, 2);
        assert!(msg.ends_with("is 1025 bytes long (at most 1024)"), "{msg}");
        assert!(msg.len() < 200);
        let dir = std::env::temp_dir().join(format!("model_opt_csv_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latin1.csv");
        std::fs::write(&path, b"id,lower,upper,size\na,0,1,1\n\xe9,0,1,1\n").unwrap();
        let err = read_csv_file(&path).unwrap_err().to_string();
        assert!(
            err.ends_with(":3: not UTF-8 text (invalid byte 0xe9)"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
