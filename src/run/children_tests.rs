//! The child tracker ([`super`]): its judgement on recorded children, and real forking
//! processes.

use super::*;

fn rec(pid: i32, cpu_first_ms: u64, cpu_grown_ms: u64, worked: bool) -> ChildRecord {
    ChildRecord {
        pid,
        started_ms: 1_000 + pid as u64,
        first_seen_ms: 1_000 + pid as u64,
        cpu_first_ms,
        cpu_grown_ms,
        cpu_since_seen_ms: cpu_grown_ms,
        worked,
        ..Default::default()
    }
}

#[test]
fn a_child_busy_until_the_stop_worked_only_beyond_its_siblings_start_up() {
    // Siblings stood still after a start-up of 190, 200 and 220 ms of CPU (median 200).
    let kids = vec![
        (rec(1, 190, 300, true), true),
        (rec(2, 200, 0, false), true),
        (rec(3, 220, 10, false), true),
        // Never stood still: 120 ms in all is its own start-up; 400 ms is work.
        (rec(4, 0, 120, true), false),
        (rec(5, 30, 370, true), false),
    ];
    assert_eq!(judge_worked(kids), vec![1, 5]);
    // No sibling stood still: busy from its first moment is work.
    let mut alone = vec![(rec(4, 0, 120, true), false)];
    judge(&mut alone, None, None);
    assert!(alone[0].0.worked);
    // A work horse (one per job) is judged on its own CPU alone.
    let mut horses = vec![(rec(1, 300, 0, false), true), (rec(2, 0, 120, true), false)];
    horses.iter_mut().for_each(|(c, _)| c.per_job = true);
    judge(&mut horses, None, None);
    assert!(horses[1].0.worked && !horses[0].0.worked);
}

/// A replacement born at 9,776 and busy until then, beside three siblings that stood still
/// after start-ups of 120, 120 and `third` ms; the pids that worked with the stop at `stop`.
fn young_replacement(cpu_first_ms: u64, cpu_grown_ms: u64, third: u64, stop: u64) -> Vec<i32> {
    let mut kids = vec![
        (rec(1, 120, 0, false), true),
        (rec(2, 120, 0, false), true),
        (rec(3, third, 0, false), true),
    ];
    let mut young = rec(4, cpu_first_ms, cpu_grown_ms, true);
    young.started_ms = 9_776;
    young.first_seen_ms = 9_800;
    kids.push((young, false));
    judge(&mut kids, None, Some(stop));
    kids.iter()
        .filter(|(c, _)| c.worked)
        .map(|(c, _)| c.pid)
        .collect()
}

#[test]
fn a_replacement_caught_starting_up_just_before_the_stop_did_not_work() {
    // As recorded (Celery, --max-tasks-per-child=1): born 224 ms before the stop, 20 + 150 ms
    // of CPU, siblings' start-ups 120, 120, 160. Past the median by the threshold, not past
    // the costliest start-up.
    assert_eq!(young_replacement(20, 150, 160, 10_000), Vec::<i32>::new());
    // The same child at a stop 2 s after its birth has had time to start up: work.
    assert_eq!(young_replacement(20, 150, 160, 11_776), vec![4]);
    // Young, with a task beyond the costliest start-up: work.
    assert_eq!(young_replacement(20, 200, 160, 10_000), vec![4]);
    // A sibling's baseline that holds a task (400; that sibling worked) does not hide a young
    // child's task: the costliest start-up counts at most half again the median (180).
    assert_eq!(young_replacement(20, 220, 400, 10_000), vec![3, 4]);
    assert_eq!(young_replacement(20, 150, 400, 10_000), vec![3]);
}

/// Children there from the start (born at 900, first seen at 1,000), judged; the pids that
/// worked.
fn judged_first_children(mut kids: Vec<(ChildRecord, bool)>) -> Vec<i32> {
    for (c, _) in kids.iter_mut() {
        c.started_ms = 900;
        c.first_seen_ms = 1_000;
    }
    judge_worked(kids)
}

fn judge_worked(mut kids: Vec<(ChildRecord, bool)>) -> Vec<i32> {
    judge(&mut kids, None, None);
    kids.iter()
        .filter(|(c, _)| c.worked)
        .map(|(c, _)| c.pid)
        .collect()
}

#[test]
fn a_child_that_did_clearly_more_than_its_siblings_start_up_worked() {
    // A batch pool under load, as measured: 3 children there from the start; two took a
    // task (450 ms start-up + 500 ms) without standing still between them (one stood still
    // only after its task: a baseline of 950), the idle one paused mid start-up (190).
    let worked = judged_first_children(vec![
        (rec(1, 20, 900, false), false),
        (rec(2, 950, 0, false), true),
        (rec(3, 190, 280, true), true),
    ]);
    // 2 gets its work back; 3 keeps what its own baseline says (it grew 280 ms after it).
    assert_eq!(worked, vec![1, 2, 3]);
    // Start-ups within half of each other are not work.
    let idle = vec![(rec(1, 300, 0, false), true), (rec(2, 420, 0, false), true)];
    assert_eq!(judged_first_children(idle), Vec::<i32>::new());
    // A replacement born later, still starting up, does not lower the cost.
    let mut later = vec![(rec(1, 400, 0, false), true), (rec(2, 420, 0, false), true)];
    for (c, _) in later.iter_mut() {
        c.started_ms = 900;
        c.first_seen_ms = 1_000;
    }
    let mut replacement = rec(3, 0, 60, false);
    replacement.started_ms = 5_000;
    replacement.first_seen_ms = 5_000;
    later.push((replacement, false));
    assert_eq!(judge_worked(later), Vec::<i32>::new());
}

#[test]
fn a_child_that_took_work_at_once_then_waited_worked() {
    // Celery --autoscale=4,1, broken set-up, 4 tasks of 0.3 s, as recorded: three children
    // stood still at their start (0, 10, 0 ms) and took a task later; the one added last took
    // its task at once and stood still only after it (320 ms).
    let kids = vec![
        (rec(1, 0, 310, true), true),
        (rec(2, 10, 310, true), true),
        (rec(3, 0, 320, true), true),
        (rec(4, 320, 0, false), true),
    ];
    assert_eq!(judge_worked(kids), vec![1, 2, 3, 4]);
    // Start-ups that differ as they do under load are no work: 120, 120, 160 and 170.
    let idle = vec![
        (rec(1, 120, 0, false), true),
        (rec(2, 120, 0, false), true),
        (rec(3, 160, 0, false), true),
        (rec(4, 170, 0, false), true),
    ];
    assert_eq!(judge_worked(idle), Vec::<i32>::new());
    // Two siblings are not enough to tell a start-up from work.
    let two = vec![(rec(1, 0, 0, false), true), (rec(2, 320, 0, false), true)];
    assert_eq!(judge_worked(two), Vec::<i32>::new());
}

#[test]
fn a_child_that_burns_cpu_and_exits_is_tracked() {
    // A parent forking one child that sleeps (its idle baseline), burns 0.3 s of CPU and
    // exits 3, and one idle child (exit 0); both are reaped only after 3 s.
    let script = "import os, time\n\
        if os.fork() == 0:\n    time.sleep(0.5); t = time.process_time()\n    while time.process_time() - t < 0.3: pass\n    time.sleep(0.2); os._exit(3)\n\
        if os.fork() == 0:\n    time.sleep(1.5); os._exit(0)\n\
        time.sleep(3.0); os.wait(); os.wait()\n";
    // The interpreter itself, not a shim (pyenv's forks a shell first).
    let exe = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    let exe = String::from_utf8_lossy(&exe.stdout).trim().to_string();
    let mut child = std::process::Command::new(exe)
        .args(["-c", script])
        .spawn()
        .unwrap();
    let parent = child.id() as i32;
    // Start tracking once both children exist: a child born after tracking began would
    // (rightly) make the first look recycled. Python's start-up is slow under load.
    let kids = format!("/proc/{parent}/task/{parent}/children");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&kids)
        .map(|s| s.split_whitespace().count())
        .unwrap_or(0)
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the children never came"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = Tracker::start(parent, Horses::None);
    // Both are zombies from about 1 s to 3 s: their exit status is read then.
    std::thread::sleep(Duration::from_millis(2500));
    let recs = t.finish();
    let _ = child.wait();
    assert_eq!(recs.len(), 2, "{recs:?}");
    let busy = recs.iter().find(|c| c.worked).expect("busy child worked");
    // Nothing replaced it: left before the stop, but not recycling.
    assert!(busy.left_before_stop && !busy.recycled, "{busy:?}");
    assert_eq!(busy.exit_status, Some(3), "zombie read: {busy:?}");
    let idle = recs.iter().find(|c| !c.worked).expect("idle child");
    assert_eq!(idle.exit_status, Some(0), "{idle:?}");
}

#[test]
fn a_pool_worker_that_forked_horses_did_not_work_itself() {
    // A worker-pool worker (pid 1) grew 60 ms forking its horses (pids 3, 4); pid 2 forked none.
    let mut kids = vec![
        (rec(1, 20, 60, true), true),
        (rec(2, 20, 60, true), true),
        (rec(3, 0, 600, true), false),
        (rec(4, 0, 10, false), false),
    ];
    kids[2].0.per_job = true;
    kids[3].0.per_job = true;
    judge(&mut kids, None, None);
    forking_is_not_work(&mut kids, &BTreeSet::from([1]));
    let worked: Vec<i32> = kids
        .iter()
        .filter(|(c, _)| c.worked)
        .map(|(c, _)| c.pid)
        .collect();
    assert_eq!(worked, vec![2, 3]);
}
