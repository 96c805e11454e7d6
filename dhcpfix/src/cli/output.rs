//! Table output for people; `--json` output is serde.

use comfy_table::{presets::NOTHING, Cell, CellAlignment, Table};

/// A borderless table with a header row, numbers right-aligned.
pub fn table(header: &[&str], rows: Vec<Vec<String>>, numeric_from: usize) -> String {
    let mut table = Table::new();
    table.load_preset(NOTHING);
    table.set_header(header.iter().map(|h| Cell::new(h.to_uppercase())));
    for row in rows {
        table.add_row(row.into_iter().enumerate().map(|(i, v)| {
            let cell = Cell::new(v);
            if i >= numeric_from {
                cell.set_alignment(CellAlignment::Right)
            } else {
                cell
            }
        }));
    }
    table.to_string()
}

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The header of a per-interface counters table: interface, namespace,
/// mode, then every counter in record order.
pub fn counters_header() -> Vec<&'static str> {
    let mut header = vec!["interface", "netns", "mode"];
    header.extend(dhcpfix::counters::Totals::NAMES);
    header
}
