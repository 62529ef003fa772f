//! Time per category: one slot per [`Category`], so sums and lookups are array indexing, not
//! string keys. Serialized as a JSON object of the non-zero categories by name, in name order
//! (what `BTreeMap<String, u64>` gave in format version 1, so files are unchanged).
use std::{collections::BTreeMap, fmt, ops};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

use super::category::{CATEGORIES, Category};

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Totals([u64; CATEGORIES.len()]);

impl Totals {
    pub fn get(&self, c: Category) -> u64 {
        self.0[c as usize]
    }

    pub fn add(&mut self, c: Category, ns: u64) {
        self.0[c as usize] = self.0[c as usize].saturating_add(ns);
    }

    /// Adds every category of `other`.
    pub fn add_all(&mut self, other: &Totals) {
        for c in CATEGORIES {
            self.add(c, other.get(c));
        }
    }

    /// Sum over every category.
    pub fn sum(&self) -> u64 {
        self.0.iter().fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// Sum over every category but `cpu`: time off the CPU.
    pub fn off_cpu(&self) -> u64 {
        self.sum() - self.get(Category::Cpu)
    }

    /// The non-zero categories, in report order.
    pub fn iter(&self) -> impl Iterator<Item = (Category, u64)> + '_ {
        CATEGORIES.iter().map(|&c| (c, self.get(c))).filter(|&(_, ns)| ns > 0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&ns| ns == 0)
    }
}

impl ops::Index<Category> for Totals {
    type Output = u64;
    fn index(&self, c: Category) -> &u64 {
        &self.0[c as usize]
    }
}

impl FromIterator<(Category, u64)> for Totals {
    fn from_iter<I: IntoIterator<Item = (Category, u64)>>(iter: I) -> Self {
        let mut t = Totals::default();
        for (c, ns) in iter {
            t.add(c, ns);
        }
        t
    }
}

impl fmt::Debug for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter().map(|(c, ns)| (c.name(), ns))).finish()
    }
}

impl Serialize for Totals {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let by_name: BTreeMap<&str, u64> = self.iter().map(|(c, ns)| (c.name(), ns)).collect();
        by_name.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Totals {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let by_name = BTreeMap::<String, u64>::deserialize(d)?;
        let mut t = Totals::default();
        for (name, ns) in by_name {
            let c = Category::from_name(&name).ok_or_else(|| D::Error::custom(format!("unknown category '{name}'")))?;
            t.add(c, ns);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_non_zero_categories_by_name_in_name_order() {
        let t: Totals = [(Category::Runqueue, 5), (Category::Cpu, 7), (Category::Disk, 0), (Category::Net, 1)]
            .into_iter()
            .collect();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"cpu":7,"net":1,"runqueue":5}"#);
        let back: Totals = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!((back.sum(), back.off_cpu(), back[Category::Cpu]), (13, 6, 7));
        assert!(serde_json::from_str::<Totals>(r#"{"cpu":1,"bogus":2}"#).is_err());
    }
}
