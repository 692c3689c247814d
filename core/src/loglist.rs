//! Lists in log lines, bounded. A leave timeout with thousands of members
//! once logged every name in one 415 KB line; a count and the first few
//! names say as much and keep log shippers happy.

use std::fmt::Display;

/// Items shown before "and N more".
pub const FEW: usize = 5;

/// `a, b, c, d, e and 995 more`; every item when there are at most [`FEW`].
pub fn few<T: Display>(items: impl IntoIterator<Item = T>) -> String {
    let mut out = String::new();
    let mut total = 0usize;
    for item in items {
        if total < FEW {
            if total > 0 {
                out.push_str(", ");
            }
            out.push_str(&item.to_string());
        }
        total += 1;
    }
    if total > FEW {
        out.push_str(&format!(" and {} more", total - FEW));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_list_shows_a_few_items_and_counts_the_rest() {
        assert_eq!(few(1..=1000), "1, 2, 3, 4, 5 and 995 more");
        assert_eq!(few(["a", "b"]), "a, b");
        assert_eq!(few(1..=FEW), "1, 2, 3, 4, 5");
        assert_eq!(few(Vec::<u8>::new()), "");
    }
}
