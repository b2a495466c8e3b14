//! Resharding: splits and merges close parents and open children with lineage; appends route
//! into the children at once; lineage and ending sequence numbers survive a restart; a
//! [`StreamReader`] finishes a parent before its children.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use sluice_engine::routing::hash_key;
use sluice_engine::{
    Engine, EngineOptions, Error, ManualClock, PutRecord, Reshard, StartPosition, StreamReader,
    StreamSpec,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const HALF: u128 = 1 << 127;

fn open(dir: &std::path::Path) -> sluice_engine::Result<Engine> {
    let clock = ManualClock::new(1_767_261_600_000);
    Engine::open(
        EngineOptions::new(dir)
            .with_clock(Arc::new(clock))
            .with_background(false),
    )
}

/// A partition key whose hash key is below (or at/above) `HALF`.
fn key_in_half(high: bool, n: usize) -> String {
    (0..)
        .map(|i| format!("key-{n}-{i}"))
        .find(|k| (hash_key(k) >= HALF) == high)
        .expect("some key hashes into either half")
}

/// Every record's data, in the order a stream reader returns them, with the shard each came from.
fn drain(reader: &mut StreamReader) -> sluice_engine::Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    loop {
        let reads = reader.read(1000)?;
        if reads.is_empty() {
            return Ok(out);
        }
        for read in reads {
            for batch in read.batches {
                let data = batch
                    .column_by_name("_data")
                    .expect("raw streams have _data")
                    .as_binary::<i32>()
                    .clone();
                for row in 0..data.len() {
                    out.push((
                        read.shard,
                        String::from_utf8_lossy(data.value(row)).into_owned(),
                    ));
                }
            }
        }
    }
}

#[test]
fn a_split_closes_the_parent_and_routes_into_two_children() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    let stream = engine.create_stream(StreamSpec::raw("events", 1), false)?;
    let low = key_in_half(false, 0);
    let high = key_in_half(true, 0);
    stream.append(&[PutRecord::new(&low, "a1"), PutRecord::new(&high, "b1")])?;

    let opened = engine.reshard(
        "events",
        Reshard::Split {
            shard: 0,
            new_starting_hash_key: HALF,
        },
    )?;
    assert_eq!(opened, vec![1, 2]);
    let put = stream.append(&[PutRecord::new(&low, "a2"), PutRecord::new(&high, "b2")])?;
    assert_eq!(
        (put[0].shard_index, put[1].shard_index),
        (1, 2),
        "records route into the children"
    );

    let shards = stream.shard_definitions();
    assert_eq!(shards.len(), 3);
    assert_eq!(
        shards[0].ending_seq,
        Some(2),
        "the parent ends at its last record"
    );
    assert_eq!(shards[1].parent, Some(0));
    assert_eq!(shards[2].parent, Some(0));
    assert_eq!(shards[1].hash_key_range.end, HALF - 1);
    assert_eq!(shards[2].hash_key_range.start, HALF);

    // A closed shard cannot be split again.
    let again = engine.reshard(
        "events",
        Reshard::Split {
            shard: 0,
            new_starting_hash_key: HALF,
        },
    );
    assert!(matches!(again, Err(Error::ShardClosed { .. })), "{again:?}");
    // A key outside the shard is refused and changes nothing.
    let outside = engine.reshard(
        "events",
        Reshard::Split {
            shard: 1,
            new_starting_hash_key: HALF + 5,
        },
    );
    assert!(
        matches!(outside, Err(Error::InvalidArgument(_))),
        "{outside:?}"
    );
    assert_eq!(stream.shards().len(), 3);

    // Lineage and the ending sequence number survive a restart, and so do the records.
    drop(stream);
    drop(engine);
    let engine = open(dir.path())?;
    let stream = engine.stream("events")?;
    assert_eq!(stream.shard_definitions(), shards);
    let mut reader = StreamReader::new(Arc::clone(&stream), |_| StartPosition::TrimHorizon)?;
    let read = drain(&mut reader)?;
    assert_eq!(
        read,
        vec![
            (0, "a1".to_string()),
            (0, "b1".to_string()),
            (1, "a2".to_string()),
            (2, "b2".to_string())
        ]
    );
    let put = stream.append(&[PutRecord::new(&low, "a3")])?;
    assert_eq!(
        put[0].shard_index, 1,
        "routing after a restart uses the children"
    );
    Ok(())
}

#[test]
fn a_reader_finishes_the_parent_before_its_children() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    let stream = engine.create_stream(StreamSpec::raw("events", 1), false)?;
    let key = key_in_half(true, 1);
    // A tailing reader that has read none of the parent yet.
    let mut reader = StreamReader::new(Arc::clone(&stream), |_| StartPosition::TrimHorizon)?;
    stream.append(&[PutRecord::new(&key, "1"), PutRecord::new(&key, "2")])?;
    engine.reshard(
        "events",
        Reshard::Split {
            shard: 0,
            new_starting_hash_key: HALF,
        },
    )?;
    stream.append(&[PutRecord::new(&key, "3")])?;
    // The first read must not hand out the child's record before the parent's.
    let first = reader.read(1)?;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].shard, 0);
    let rest = drain(&mut reader)?;
    assert_eq!(rest, vec![(0, "2".to_string()), (2, "3".to_string())]);
    assert!(reader.caught_up());
    Ok(())
}

#[test]
fn a_merge_joins_adjacent_shards_only() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    let stream = engine.create_stream(StreamSpec::raw("events", 3), false)?;
    let apart = engine.reshard(
        "events",
        Reshard::Merge {
            shard: 0,
            adjacent: 2,
        },
    );
    assert!(matches!(apart, Err(Error::InvalidArgument(_))), "{apart:?}");
    let opened = engine.reshard(
        "events",
        Reshard::Merge {
            shard: 2,
            adjacent: 1,
        },
    )?;
    assert_eq!(opened, vec![3]);
    let child = stream.shard(3).expect("the merged shard exists");
    assert_eq!(
        (child.parent(), child.adjacent_parent()),
        (Some(2), Some(1))
    );
    assert_eq!(child.hash_key_range().end, u128::MAX);
    assert_eq!(
        child.hash_key_range().start,
        stream.shard(1).expect("shard 1").hash_key_range().start
    );
    assert_eq!(stream.open_shards().len(), 2);
    Ok(())
}

#[test]
fn uniform_scaling_reaches_an_even_split_within_kinesis_limits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(dir.path())?;
    let stream = engine.create_stream(StreamSpec::raw("events", 2), false)?;
    let too_many = engine.reshard("events", Reshard::UniformScaling { target: 5 });
    assert!(
        matches!(too_many, Err(Error::LimitExceeded(_))),
        "{too_many:?}"
    );

    engine.reshard("events", Reshard::UniformScaling { target: 3 })?;
    let open: Vec<_> = stream
        .open_shards()
        .iter()
        .map(|s| s.hash_key_range())
        .collect();
    assert_eq!(open, sluice_engine::routing::even_split(3));
    for shard in stream.shards().iter() {
        let parents = [shard.parent(), shard.adjacent_parent()];
        assert!(parents.iter().flatten().count() <= 2);
    }
    // Records for every key still land, in an open shard.
    let records: Vec<PutRecord> = (0..100)
        .map(|i| PutRecord::new(format!("k{i}"), "x"))
        .collect();
    for put in stream.append(&records)? {
        assert!(stream.shard(put.shard_index).is_some_and(|s| s.is_open()));
    }
    engine.reshard("events", Reshard::UniformScaling { target: 2 })?;
    let open: Vec<_> = stream
        .open_shards()
        .iter()
        .map(|s| s.hash_key_range())
        .collect();
    assert_eq!(open, sluice_engine::routing::even_split(2));
    // Everything put before the reshards is still read, parents first.
    let mut reader = StreamReader::new(Arc::clone(&stream), |_| StartPosition::TrimHorizon)?;
    assert_eq!(drain(&mut reader)?.len(), 100);
    Ok(())
}
