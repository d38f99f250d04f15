//! Shared by the rate examples: how many times a second `f` runs within `budget`.

use std::time::{Duration, Instant};

/// Runs `f` repeatedly for `budget` and returns its rate per second.
pub fn per_second(budget: Duration, f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}
