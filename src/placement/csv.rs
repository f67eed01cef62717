//! MiniMalloc's CSV format: `id,lower,upper,size[,offset]`, one buffer a row, lifetimes half-open.
//!
//! Extensions, by header name: `alignment` (offsets must be multiples of it) and `fixed_offset` (the
//! buffer must be placed exactly there). Columns may come in any order; blank lines are skipped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use thiserror::Error;

use super::problem::{Buffer, Bytes, Interval, Problem, Solution};

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

/// A parsed CSV file: the problem, and the offsets if the file carried an `offset` column.
#[derive(Debug, Clone)]
pub struct ParsedCsv {
    pub problem: Problem,
    pub offsets: Option<Vec<Bytes>>,
}

const REQUIRED: [&str; 4] = ["id", "lower", "upper", "size"];
const OPTIONAL: [&str; 3] = ["offset", "alignment", "fixed_offset"];

/// Largest value accepted for any number, so that sums of sizes and offsets cannot overflow.
const MAX_VALUE: u64 = 1 << 53;

pub fn read_csv_file(path: &Path) -> Result<ParsedCsv, CsvError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CsvError::Io {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    parse_csv(&text, &file)
}

/// Parses CSV text; `file` names the source in error messages.
pub fn parse_csv(text: &str, file: &str) -> Result<ParsedCsv, CsvError> {
    let err = |line: usize, message: String| CsvError::Line {
        file: file.to_string(),
        line,
        message,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    let Some((header_line, header)) = lines.next() else {
        return Err(CsvError::Empty {
            file: file.to_string(),
        });
    };
    let columns = Columns::from_header(header).map_err(|m| err(header_line, m))?;

    let mut buffers = Vec::new();
    let mut offsets = columns.offset.map(|_| Vec::new());
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut total_size: u64 = 0;
    for (line, row) in lines {
        let cells: Vec<&str> = row.split(',').map(str::trim).collect();
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
        let id = cells[columns.id];
        if id.is_empty() {
            return Err(err(line, "empty id".into()));
        }
        if let Some(first) = seen.insert(id.to_string(), line) {
            return Err(err(
                line,
                format!("duplicate id '{id}' (first on line {first})"),
            ));
        }
        let number =
            |col: usize, name: &str| parse_number(cells[col], name).map_err(|m| err(line, m));
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
            if alignment == 0 {
                return Err(err(
                    line,
                    format!("buffer '{id}': alignment must be at least 1"),
                ));
            }
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
    }
    Ok(ParsedCsv {
        problem: Problem::new(buffers),
        offsets,
    })
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
    fn from_header(header: &str) -> Result<Columns, String> {
        let names: Vec<String> = header
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
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

fn parse_number(cell: &str, name: &str) -> Result<u64, String> {
    let value: i128 = cell
        .parse()
        .map_err(|_| format!("{name} '{cell}' is not an integer"))?;
    if value < 0 {
        return Err(format!("{name} {value} is negative"));
    }
    if value > i128::from(MAX_VALUE) {
        return Err(format!("{name} {value} is too large (at most {MAX_VALUE})"));
    }
    Ok(value as u64)
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
            b.name, b.lifetime.start, b.lifetime.end, b.size
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
}
