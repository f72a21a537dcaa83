//! Tables of results, rendered as aligned text (the terminal), Markdown or CSV: every table
//! gcl prints or writes goes through here.
use std::fmt::Write;

/// A header and rows of text cells; the first column is a label, the others are numbers
/// (right-aligned).
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A fraction as a percentage with two decimals, `-` for none.
pub fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}", 100.0 * v))
}

/// A fraction with six decimals, empty for none (CSV).
pub fn frac(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.6}"))
}

impl Table {
    pub fn new<S: ToString>(header: &[S]) -> Self {
        Table { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row<S: ToString>(&mut self, cells: &[S]) {
        debug_assert_eq!(cells.len(), self.header.len(), "a row has one cell per column");
        self.rows.push(cells.iter().map(|c| c.to_string()).collect());
    }

    pub fn header(&self) -> &[String] {
        &self.header
    }

    pub fn rows(&self) -> &[Vec<String>] {
        &self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Columns padded to their widest cell, two spaces apart.
    pub fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| self.rows.iter().map(|r| r[c].chars().count()).chain([self.header[c].chars().count()]).max().unwrap_or(0))
            .collect();
        let mut s = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (v, &w))| if c == 0 { format!("{v:<w$}") } else { format!("{v:>w$}") })
                .collect();
            let _ = writeln!(s, "{}", cells.join("  ").trim_end());
        }
        s
    }

    /// A GitHub-flavoured Markdown table (numbers right-aligned).
    pub fn markdown(&self) -> String {
        let mut s = format!("| {} |\n", self.header.join(" | "));
        let rule: Vec<&str> = (0..self.header.len()).map(|c| if c == 0 { "---" } else { "---:" }).collect();
        let _ = writeln!(s, "|{}|", rule.join("|"));
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s
    }

    /// CSV: a header line, then one line per row (cells quoted where they need it).
    pub fn csv(&self) -> String {
        let quote = |v: &String| if v.contains([',', '"', '\n']) { format!("\"{}\"", v.replace('"', "\"\"")) } else { v.clone() };
        let mut s = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let _ = writeln!(s, "{}", line.iter().map(quote).collect::<Vec<_>>().join(","));
        }
        s
    }
}
