//! Aligned text tables and the cell formats they share.

use std::fmt::Display;

/// Columns padded to their widest cell, two spaces apart.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<usize>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
            right: Vec::new(),
        }
    }

    /// Right-aligns the columns `columns` (by index), for numbers.
    pub fn right_align(mut self, columns: &[usize]) -> Self {
        self.right = columns.to_vec();
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "row width");
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, &width)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right.contains(&i) {
                    line.push_str(&format!("{cell:>width$}"));
                } else {
                    line.push_str(&format!("{cell:<width$}"));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The value, or `-` when there is none.
pub(crate) fn or_dash<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A duration for people: `850ms`, `12.3s`, `5m02s`, `3h04m`, `2d03h`.
pub(crate) fn duration(ns: u64) -> String {
    let ms = ns / 1_000_000;
    let s = ns / 1_000_000_000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{}.{}s", s, ms % 1000 / 100),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut table = Table::new(["NAME", "N"]).right_align(&[1]);
        table.row(vec!["a".into(), "100".into()]);
        table.row(vec!["longer".into(), "2".into()]);
        assert_eq!(table.render(), "NAME      N\na       100\nlonger    2\n");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(850_000_000), "850ms");
        assert_eq!(duration(12_345_000_000), "12.3s");
        assert_eq!(duration(302 * 1_000_000_000), "5m02s");
        assert_eq!(duration((3 * 3600 + 4 * 60) * 1_000_000_000), "3h04m");
        assert_eq!(duration((2 * 86400 + 3 * 3600) * 1_000_000_000), "2d03h");
    }
}
