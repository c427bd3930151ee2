//! The process's descriptor budget counts the files batches in flight hold (a test binary of
//! its own: it spends the whole budget, which every engine of a process shares).

use lsio_torch::io::open_files::{budget, close_idle, open, out_of_descriptors};

#[test]
fn files_held_by_batches_count_in_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = budget();
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..=budget {
        let path = dir.path().join(format!("c.{i}"));
        std::fs::write(&path, b"1").unwrap();
        match open(&path, false) {
            Ok((file, _)) => held.push(file.unwrap()),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the budget was not enforced");
    assert!(out_of_descriptors(&e), "{e}");
    assert_eq!(held.len(), budget);
    // The batch ends: its files are idle, and the next open closes one to make room.
    held.clear();
    let path = dir.path().join("after");
    std::fs::write(&path, b"1").unwrap();
    assert!(open(&path, false).unwrap().0.is_some());
    assert_eq!(close_idle(), budget);
}
