//! `gust.toml` and route claims: parsing any text never panics; a manifest
//! that parses names a valid function and gives every schedule and
//! trigger a distinct id; a claim that parses prints back to itself and
//! matches only on segment boundaries.
#![no_main]

use gust_core::manifest::{Manifest, managed_id};
use gust_core::route::{ClaimTable, RouteClaim};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, &str, &str)| {
    let (manifest, claim, host, path) = input;
    if let Ok(m) = Manifest::parse(manifest) {
        assert!(gust_core::FunctionName::new(m.function.name.as_str()).is_ok());
        let ids: std::collections::HashSet<String> = m
            .schedules
            .iter()
            .enumerate()
            .map(|(i, s)| managed_id(s.id.as_deref(), i))
            .collect();
        assert_eq!(ids.len(), m.schedules.len());
        let _ = (m.build_command(), m.wasm_path(), m.watch());
    }
    if let Ok(c) = claim.parse::<RouteClaim>() {
        let again: RouteClaim = c.to_string().parse().expect("a claim prints back");
        assert_eq!(again, c);
        let mut table = ClaimTable::default();
        table.insert(&c, ());
        for (_, tail) in [table.by_host(host, path), table.by_path(path)]
            .into_iter()
            .flatten()
        {
            assert!(path.ends_with(tail));
            assert!(tail.is_empty() || tail.starts_with(['/', '?']));
        }
    }
});
