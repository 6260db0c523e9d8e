use super::*;

fn groups(n: u64) -> Vec<GroupRef> {
    (0..n).map(|group| GroupRef { file: 0, group }).collect()
}

/// Fills every free slot; returns what was asked.
fn fill(plan: &mut Planner<&'static str>, now: Instant) -> Vec<Request<&'static str>> {
    std::iter::from_fn(|| plan.next_request(now)).collect()
}

#[test]
fn stripes_across_three_providers() {
    let t0 = Instant::now();
    let mut plan = Planner::new(PlanConfig::default().with_window(4), groups(60));
    for p in ["a", "b", "c"] {
        assert!(plan.add_provider(p));
    }
    let mut verified = BTreeSet::new();
    let mut outstanding: VecDeque<Request<&str>> = VecDeque::new();
    let mut tick = 0;
    while !plan.is_done() {
        let now = t0 + Duration::from_millis(10 * tick);
        let asked = fill(&mut plan, now);
        for r in &asked {
            assert!(!r.duplicate, "no endgame while all answer in time");
            // Never one group at two providers while the queue has work.
            assert!(outstanding.iter().all(|o| o.group != r.group));
        }
        outstanding.extend(asked);
        assert!(["a", "b", "c"].iter().all(|p| plan.outstanding(p) <= 4));
        // Every provider answers its oldest request each tick (equal rates).
        for p in ["a", "b", "c"] {
            if let Some(i) = outstanding.iter().position(|r| r.provider == p) {
                let Some(r) = outstanding.remove(i) else {
                    unreachable!()
                };
                assert_eq!(
                    plan.on_verified(&r.provider, r.group),
                    Answer::Done { cancel: vec![] }
                );
                assert!(verified.insert(r.group), "{:?} twice", r.group);
            }
        }
        tick += 1;
    }
    assert_eq!(verified.len(), 60);
    let served: Vec<u64> = plan.served().map(|(_, n)| n).collect();
    assert_eq!(served, [20, 20, 20], "an even split at equal rates");
    assert_eq!(plan.poll_timeout(), None);
    assert!(plan.next_request(t0 + Duration::from_secs(60)).is_none());
}

#[test]
fn a_faster_provider_gets_more() {
    let t0 = Instant::now();
    let mut plan = Planner::new(PlanConfig::default().with_window(2), groups(90));
    plan.add_provider("fast");
    plan.add_provider("slow");
    let mut outstanding: Vec<Request<&str>> = Vec::new();
    let mut tick = 0u64;
    while !plan.is_done() {
        let now = t0 + Duration::from_millis(tick);
        outstanding.extend(fill(&mut plan, now));
        // "fast" answers every tick, "slow" every third.
        for (p, every) in [("fast", 1), ("slow", 3)] {
            if tick.is_multiple_of(every)
                && let Some(i) = outstanding.iter().position(|r| r.provider == p)
            {
                let r = outstanding.remove(i);
                plan.on_verified(&r.provider, r.group);
            }
        }
        tick += 1;
    }
    let served: BTreeMap<&str, u64> = plan.served().map(|(p, n)| (*p, n)).collect();
    assert!(served["fast"] >= 2 * served["slow"], "{served:?}");
}

#[test]
fn a_provider_that_sent_a_bad_group_is_dropped_and_its_groups_requeued() {
    let t0 = Instant::now();
    let mut plan = Planner::new(PlanConfig::default().with_window(3), groups(30));
    for p in ["a", "bad", "c"] {
        plan.add_provider(p);
    }
    let first = fill(&mut plan, t0);
    assert_eq!(first.len(), 9);
    let bad: Vec<GroupRef> = first
        .iter()
        .filter(|r| r.provider == "bad")
        .map(|r| r.group)
        .collect();
    assert_eq!(bad.len(), 3);
    let requeued = plan.on_bad(&"bad", bad[0]);
    assert_eq!(requeued, bad, "all its outstanding groups go back");
    assert!(
        !plan.add_provider("bad"),
        "not taken back for this transfer"
    );
    assert_eq!(plan.outstanding(&"bad"), 0);

    let mut outstanding: Vec<Request<&str>> =
        first.into_iter().filter(|r| r.provider != "bad").collect();
    let mut verified = BTreeSet::new();
    let mut tick = 1;
    while !plan.is_done() {
        for r in std::mem::take(&mut outstanding) {
            plan.on_verified(&r.provider, r.group);
            verified.insert(r.group);
        }
        let asked = fill(&mut plan, t0 + Duration::from_millis(tick));
        assert!(asked.iter().all(|r| r.provider != "bad"));
        // The requeued groups are asked again first.
        if tick == 1 {
            let again: Vec<GroupRef> = asked.iter().map(|r| r.group).collect();
            assert_eq!(&again[..3], &bad[..]);
        }
        outstanding.extend(asked);
        tick += 1;
    }
    assert_eq!(verified.len(), 30);
    // Late data from the dropped provider is not wanted.
    assert_eq!(plan.on_verified(&"bad", bad[1]), Answer::Unexpected);
}

#[test]
fn endgame_asks_a_slow_providers_groups_elsewhere() {
    let t0 = Instant::now();
    let after = Duration::from_millis(500);
    let config = PlanConfig::default()
        .with_window(2)
        .with_endgame_after(after);
    let mut plan = Planner::new(config, groups(10));
    plan.add_provider("fast");
    plan.add_provider("stuck");
    // The stuck provider takes two groups and never answers.
    let first = fill(&mut plan, t0);
    let stuck: Vec<GroupRef> = first
        .iter()
        .filter(|r| r.provider == "stuck")
        .map(|r| r.group)
        .collect();
    assert_eq!(stuck.len(), 2);
    let mut outstanding: Vec<Request<&str>> =
        first.into_iter().filter(|r| r.provider == "fast").collect();
    // The fast one drains the queue.
    let mut now = t0;
    while !outstanding.is_empty() {
        now += Duration::from_millis(10);
        for r in std::mem::take(&mut outstanding) {
            assert_eq!(
                plan.on_verified(&r.provider, r.group),
                Answer::Done { cancel: vec![] }
            );
        }
        outstanding.extend(fill(&mut plan, now));
    }
    assert_eq!(plan.remaining(), 2, "only the stuck groups are left");
    // Not yet: they were asked at t0, the endgame starts at t0 + 500 ms.
    assert_eq!(plan.poll_timeout(), Some(t0 + after));
    assert!(
        plan.next_request(t0 + after - Duration::from_millis(1))
            .is_none()
    );
    let dup = fill(&mut plan, t0 + after);
    assert_eq!(dup.len(), 2);
    assert!(dup.iter().all(|r| r.provider == "fast" && r.duplicate));
    let mut dup_groups: Vec<GroupRef> = dup.iter().map(|r| r.group).collect();
    dup_groups.sort();
    assert_eq!(dup_groups, stuck);
    // Two copies each at most: nothing more to hand out, ever.
    assert_eq!(plan.poll_timeout(), None);
    assert!(plan.next_request(t0 + 10 * after).is_none());
    // The duplicate wins and names the stuck request to cancel.
    for r in dup {
        assert_eq!(
            plan.on_verified(&"fast", r.group),
            Answer::Done {
                cancel: vec!["stuck"]
            }
        );
    }
    assert!(plan.is_done());
    assert_eq!(
        plan.outstanding(&"stuck"),
        0,
        "cancelled requests are freed"
    );
    // The stuck provider's answer arriving after all is discarded.
    assert_eq!(plan.on_verified(&"stuck", stuck[0]), Answer::Unexpected);
}

#[test]
fn a_provider_that_leaves_or_fails_gives_its_groups_back() {
    let t0 = Instant::now();
    let mut plan = Planner::new(
        PlanConfig::default().with_window(2).with_max_providers(2),
        groups(6),
    );
    plan.add_provider("a");
    plan.add_provider("b");
    assert!(!plan.add_provider("c"), "max_providers");
    let first = fill(&mut plan, t0);
    assert_eq!(first.len(), 4);
    let a: Vec<GroupRef> = first
        .iter()
        .filter(|r| r.provider == "a")
        .map(|r| r.group)
        .collect();
    assert_eq!(plan.remove_provider(&"a"), a);
    assert!(plan.add_provider("a"), "a provider that left may come back");
    let b0 = first.iter().find(|r| r.provider == "b").unwrap().group;
    plan.on_failed(&"b", b0);
    assert_eq!(plan.outstanding(&"b"), 1);
    // The failed group is asked first, then a's.
    let next: Vec<GroupRef> = fill(&mut plan, t0).iter().map(|r| r.group).collect();
    assert_eq!(next[0], b0);
    assert_eq!(next[1], a[0]);
    assert_eq!(plan.remaining(), 6);
}

#[test]
fn missing_runs_are_kept_as_ranges() {
    let missing = [0, 1, 2, 3, 7, 8, 100]
        .into_iter()
        .map(|group| GroupRef { file: 0, group })
        .chain([GroupRef { file: 1, group: 0 }]);
    let mut plan = Planner::new(PlanConfig::default().with_window(100), missing);
    assert_eq!(plan.queue.len(), 4);
    plan.add_provider("a");
    let got: Vec<(u32, u64)> = fill(&mut plan, Instant::now())
        .iter()
        .map(|r| (r.group.file, r.group.group))
        .collect();
    assert_eq!(
        got,
        [
            (0, 0),
            (0, 1),
            (0, 2),
            (0, 3),
            (0, 7),
            (0, 8),
            (0, 100),
            (1, 0)
        ]
    );
}

#[test]
fn a_provider_that_answers_not_yet_stays_and_is_asked_for_other_groups() {
    let t0 = Instant::now();
    let config = PlanConfig::default()
        .with_window(2)
        .with_not_yet_retry(Duration::from_secs(1));
    let mut plan = Planner::new(config, groups(8));
    plan.add_provider("seed");
    plan.add_provider("partial");
    let asked = fill(&mut plan, t0);
    assert_eq!(asked.len(), 4);
    // The partial provider has none of what it was asked for yet.
    let lacked: Vec<GroupRef> = asked
        .iter()
        .filter(|r| r.provider == "partial")
        .map(|r| r.group)
        .collect();
    assert_eq!(lacked.len(), 2);
    for g in &lacked {
        plan.on_missing(&"partial", *g, t0);
    }
    assert_eq!(plan.outstanding(&"partial"), 0, "still in the transfer");
    // It is asked for other groups, never for those it lacks; the seed has no room.
    let again = fill(&mut plan, t0);
    assert_eq!(again.len(), 2);
    for r in &again {
        assert_eq!(r.provider, "partial");
        assert!(!lacked.contains(&r.group), "{r:?}");
    }
    // The lacked groups go to the seed as it frees its window.
    for r in asked.iter().filter(|r| r.provider == "seed") {
        assert!(matches!(
            plan.on_verified(&"seed", r.group),
            Answer::Done { .. }
        ));
    }
    let to_seed = fill(&mut plan, t0);
    let mut got: Vec<GroupRef> = to_seed.iter().map(|r| r.group).collect();
    got.sort();
    assert_eq!(got, lacked, "the lacked groups go first");
    assert!(to_seed.iter().all(|r| r.provider == "seed"));
    // It lacks these too now; with the seed's window full nothing is asked...
    for r in again {
        plan.on_missing(&"partial", r.group, t0);
    }
    let more = fill(&mut plan, t0);
    assert!(more.iter().all(|r| r.provider == "partial"));
    for r in more {
        plan.on_missing(&"partial", r.group, t0);
    }
    assert!(
        fill(&mut plan, t0).is_empty(),
        "it lacks all that is queued"
    );
    // ... until the retry time, when it may be asked for them again.
    let wake = plan.poll_timeout().expect("a retry is due at some point");
    assert_eq!(wake, t0 + Duration::from_secs(1));
    let later = fill(&mut plan, wake);
    assert_eq!(later.len(), 2);
    assert!(later.iter().all(|r| r.provider == "partial"));
}

#[test]
fn a_transfer_of_only_not_yet_providers_waits_instead_of_spinning() {
    let t0 = Instant::now();
    let mut plan = Planner::new(PlanConfig::default().with_window(4), groups(3));
    plan.add_provider("partial");
    let asked = fill(&mut plan, t0);
    for r in &asked {
        plan.on_missing(&"partial", r.group, t0);
    }
    assert!(fill(&mut plan, t0).is_empty());
    let wake = plan.poll_timeout().unwrap();
    assert!(wake > t0);
    // At that time it is asked again, and then it has them.
    let again = fill(&mut plan, wake);
    assert_eq!(again.len(), 3);
    for r in again {
        assert!(matches!(
            plan.on_verified(&"partial", r.group),
            Answer::Done { .. }
        ));
    }
    assert!(plan.is_done());
}

#[test]
fn the_start_point_rotates_the_order_and_keeps_every_group() {
    let missing: Vec<GroupRef> = (0..4)
        .chain(10..14)
        .map(|group| GroupRef { file: 0, group })
        .collect();
    let mut plan = Planner::new(
        PlanConfig::default().with_window(100).with_start(8 + 5),
        missing.clone(),
    );
    plan.add_provider("a");
    let order: Vec<u64> = fill(&mut plan, Instant::now())
        .iter()
        .map(|r| r.group.group)
        .collect();
    assert_eq!(order, vec![11, 12, 13, 0, 1, 2, 3, 10]);
}
