//! Forming a ring generation: which workers train which virtual shards, and whose state the ring starts from.
//!
//! A job's train/test split is cut into a fixed number of virtual shards (its world size at submit). Every
//! generation deals all of them over its members: survivors keep the shards they hold (their images are
//! loaded), a lost member's shards go to the least loaded members (a joiner first), and loads are levelled
//! so no member trains more than one shard above another.

use std::collections::BTreeMap;

/// A member's standing when a generation ended, as it reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SurvivorState {
    pub worker_id: String,
    /// Global optimizer steps the worker has applied.
    pub completed_steps: u64,
    /// Epochs whose end (batch-norm sync + evaluation) the worker has done.
    pub evaluated_epochs: u32,
}

/// The layout of a new generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationLayout {
    /// Worker id of each rank.
    pub members: Vec<String>,
    /// Virtual shards of each rank, ascending.
    pub shards_of_rank: Vec<Vec<u32>>,
    /// The rank whose state the generation starts from (`None`: no member holds state).
    pub source_rank: Option<usize>,
}

/// Lays out a generation over `survivors` (members of the previous generation that hold the training state,
/// in their previous rank order) and `joiners` (fresh workers). `previous_shards` maps a worker id to the
/// virtual shards it trained. Every one of `shard_count` shards gets exactly one owner.
pub fn layout_generation(
    shard_count: u32,
    survivors: &[SurvivorState],
    joiners: &[String],
    previous_shards: &BTreeMap<String, Vec<u32>>,
) -> GenerationLayout {
    let members: Vec<String> = survivors
        .iter()
        .map(|survivor| survivor.worker_id.clone())
        .chain(joiners.iter().cloned())
        .collect();
    if members.is_empty() {
        return GenerationLayout {
            members,
            shards_of_rank: Vec::new(),
            source_rank: None,
        };
    }
    let mut shards_of_rank: Vec<Vec<u32>> = vec![Vec::new(); members.len()];
    let mut owned = vec![false; shard_count as usize];
    for (rank, survivor) in survivors.iter().enumerate() {
        for &shard in previous_shards
            .get(&survivor.worker_id)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if shard < shard_count && !owned[shard as usize] {
                owned[shard as usize] = true;
                shards_of_rank[rank].push(shard);
            }
        }
    }
    // Orphaned shards go to whoever holds the fewest (ties: the lowest rank, so joiners after survivors).
    for shard in 0..shard_count {
        if !owned[shard as usize] {
            let least_loaded = least_loaded_rank(&shards_of_rank);
            shards_of_rank[least_loaded].push(shard);
        }
    }
    // Level the loads: move a shard from the most to the least loaded member until they differ by at most one.
    loop {
        let most_loaded = (0..shards_of_rank.len())
            .max_by_key(|&rank| (shards_of_rank[rank].len(), std::cmp::Reverse(rank)))
            .expect("members is not empty");
        let least_loaded = least_loaded_rank(&shards_of_rank);
        if shards_of_rank[most_loaded].len() <= shards_of_rank[least_loaded].len() + 1 {
            break;
        }
        let moved = shards_of_rank[most_loaded]
            .pop()
            .expect("the most loaded member holds shards");
        shards_of_rank[least_loaded].push(moved);
    }
    for shards in &mut shards_of_rank {
        shards.sort_unstable();
    }
    let source_rank = survivors
        .iter()
        .enumerate()
        .max_by_key(|(rank, survivor)| {
            (
                survivor.completed_steps,
                survivor.evaluated_epochs,
                std::cmp::Reverse(*rank),
            )
        })
        .map(|(rank, _)| rank);
    GenerationLayout {
        members,
        shards_of_rank,
        source_rank,
    }
}

fn least_loaded_rank(shards_of_rank: &[Vec<u32>]) -> usize {
    (0..shards_of_rank.len())
        .min_by_key(|&rank| (shards_of_rank[rank].len(), rank))
        .expect("members is not empty")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn survivor(worker_id: &str, completed_steps: u64) -> SurvivorState {
        SurvivorState {
            worker_id: worker_id.into(),
            completed_steps,
            evaluated_epochs: 0,
        }
    }

    fn owners(previous: &[(&str, &[u32])]) -> BTreeMap<String, Vec<u32>> {
        previous
            .iter()
            .map(|(worker, shards)| (worker.to_string(), shards.to_vec()))
            .collect()
    }

    #[test]
    fn the_first_generation_gives_each_worker_its_own_shard() {
        let layout = layout_generation(
            3,
            &[],
            &["a".into(), "b".into(), "c".into()],
            &BTreeMap::new(),
        );
        assert_eq!(layout.shards_of_rank, vec![vec![0], vec![1], vec![2]]);
        assert_eq!(layout.source_rank, None);
    }

    #[test]
    fn survivors_keep_their_shards_and_take_the_lost_ones() {
        let previous = owners(&[("a", &[0]), ("b", &[1]), ("c", &[2])]);
        let layout = layout_generation(3, &[survivor("a", 7), survivor("c", 8)], &[], &previous);
        assert_eq!(layout.members, vec!["a", "c"]);
        assert_eq!(layout.shards_of_rank, vec![vec![0, 1], vec![2]]);
        assert_eq!(
            layout.source_rank,
            Some(1),
            "c applied one more step: it is the source"
        );
    }

    #[test]
    fn a_joiner_takes_the_lost_shard() {
        let previous = owners(&[("a", &[0]), ("b", &[1]), ("c", &[2])]);
        let layout = layout_generation(
            3,
            &[survivor("a", 7), survivor("c", 7)],
            &["d".into()],
            &previous,
        );
        assert_eq!(layout.shards_of_rank, vec![vec![0], vec![2], vec![1]]);
        assert_eq!(layout.source_rank, Some(0));
    }

    #[test]
    fn growing_back_levels_the_loads() {
        let previous = owners(&[("a", &[0, 1]), ("c", &[2])]);
        let layout = layout_generation(
            4,
            &[survivor("a", 3), survivor("c", 3)],
            &["d".into(), "e".into()],
            &previous,
        );
        let mut all: Vec<u32> = layout.shards_of_rank.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3]);
        assert!(layout.shards_of_rank.iter().all(|shards| shards.len() == 1));
        assert_eq!(layout.shards_of_rank[1], vec![2], "c keeps what it loaded");
    }
}
