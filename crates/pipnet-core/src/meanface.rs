//! The mean face and the neighbour index that PIPNet's neighbour regression is built on
//! (docs/model-contract.md, "Metadata": mean face and neighbours).

use crate::{Error, Point, Result};

/// Mean of a set of faces, each a list of L points in crop-normalised units.
pub fn mean_face(faces: &[Vec<Point>]) -> Result<Vec<Point>> {
    let first = faces.first().ok_or_else(|| Error::Invalid {
        what: "mean face",
        detail: "no faces given".into(),
    })?;
    let n = first.len();
    let mut sum = vec![[0f64; 2]; n];
    for face in faces {
        if face.len() != n {
            return Err(Error::SizeMismatch {
                what: "landmarks in a face of the mean-face set",
                got: face.len(),
                expected: n,
            });
        }
        for (s, p) in sum.iter_mut().zip(face) {
            s[0] += f64::from(p[0]);
            s[1] += f64::from(p[1]);
        }
    }
    let count = faces.len() as f64;
    Ok(sum
        .into_iter()
        .map(|[x, y]| [(x / count) as f32, (y / count) as f32])
        .collect())
}

/// For each landmark, its C nearest landmarks in the mean face (nearest first), plus the reverse
/// index used when merging: which `(landmark, k)` predictions vote for each landmark.
#[derive(Debug, Clone, PartialEq)]
pub struct NeighborIndex {
    num_landmarks: usize,
    num_neighbors: usize,
    /// Row-major `[L, C]`.
    neighbors: Vec<u32>,
    /// CSR offsets into `voters`, length L + 1.
    voter_offsets: Vec<u32>,
    /// Flat `l * C + k` indices into the neighbour channels, grouped by the landmark voted for.
    voters: Vec<u32>,
}

impl NeighborIndex {
    /// The C nearest other landmarks of each landmark of `mean_face` (Euclidean; ties go to the
    /// lower index).
    pub fn from_mean_face(mean_face: &[Point], num_neighbors: usize) -> Result<Self> {
        let n = mean_face.len();
        if num_neighbors == 0 || num_neighbors >= n {
            return Err(Error::Invalid {
                what: "neighbour count",
                detail: format!("{num_neighbors} for {n} landmarks (need 1..{n})"),
            });
        }
        let mut rows = Vec::with_capacity(n * num_neighbors);
        for (i, p) in mean_face.iter().enumerate() {
            let mut others: Vec<(f32, usize)> = mean_face
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, q)| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2), j))
                .collect();
            others.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            rows.extend(others[..num_neighbors].iter().map(|&(_, j)| j as u32));
        }
        Self::from_rows(n, num_neighbors, rows)
    }

    /// Builds the index from stored rows (`pipnet.neighbors`), checking every entry.
    pub fn from_rows(num_landmarks: usize, num_neighbors: usize, rows: Vec<u32>) -> Result<Self> {
        if rows.len() != num_landmarks * num_neighbors {
            return Err(Error::SizeMismatch {
                what: "neighbour indices",
                got: rows.len(),
                expected: num_landmarks * num_neighbors,
            });
        }
        let mut counts = vec![0u32; num_landmarks];
        for (flat, &j) in rows.iter().enumerate() {
            let l = flat / num_neighbors;
            if j as usize >= num_landmarks || j as usize == l {
                return Err(Error::Invalid {
                    what: "neighbour index",
                    detail: format!("landmark {l} lists {j} (need 0..{num_landmarks}, not itself)"),
                });
            }
            counts[j as usize] += 1;
        }
        let mut voter_offsets = Vec::with_capacity(num_landmarks + 1);
        voter_offsets.push(0u32);
        for c in &counts {
            voter_offsets.push(voter_offsets.last().copied().unwrap_or(0) + c);
        }
        let mut fill: Vec<u32> = voter_offsets[..num_landmarks].to_vec();
        let mut voters = vec![0u32; rows.len()];
        for (flat, &j) in rows.iter().enumerate() {
            let slot = &mut fill[j as usize];
            voters[*slot as usize] = flat as u32;
            *slot += 1;
        }
        Ok(Self {
            num_landmarks,
            num_neighbors,
            neighbors: rows,
            voter_offsets,
            voters,
        })
    }

    pub fn num_landmarks(&self) -> usize {
        self.num_landmarks
    }

    pub fn num_neighbors(&self) -> usize {
        self.num_neighbors
    }

    /// The neighbours of landmark `l`, nearest first.
    pub fn neighbors_of(&self, l: usize) -> &[u32] {
        &self.neighbors[l * self.num_neighbors..(l + 1) * self.num_neighbors]
    }

    /// All rows, `[L, C]` row-major (the `pipnet.neighbors` layout).
    pub fn rows(&self) -> &[u32] {
        &self.neighbors
    }

    /// Flat `l * C + k` neighbour channels that vote for landmark `j` (in increasing order).
    pub fn voters_of(&self, j: usize) -> &[u32] {
        &self.voters[self.voter_offsets[j] as usize..self.voter_offsets[j + 1] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mean_face_averages_each_point() {
        let faces = vec![vec![[0.0, 0.0], [1.0, 2.0]], vec![[1.0, 1.0], [3.0, 0.0]]];
        assert_eq!(mean_face(&faces).unwrap(), vec![[0.5, 0.5], [2.0, 1.0]]);
        assert!(mean_face(&[]).is_err());
        assert!(mean_face(&[vec![[0.0, 0.0]], vec![]]).is_err());
    }

    #[test]
    fn test_neighbors_are_nearest_first_and_exclude_self() {
        // Points on a line at 0, 1, 3, 7: distances grow so the order is unique.
        let face = [[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]];
        let index = NeighborIndex::from_mean_face(&face, 2).unwrap();
        assert_eq!(index.neighbors_of(0), &[1, 2]);
        assert_eq!(index.neighbors_of(1), &[0, 2]);
        assert_eq!(index.neighbors_of(2), &[1, 0]);
        assert_eq!(index.neighbors_of(3), &[2, 1]);
    }

    #[test]
    fn test_reverse_index_lists_every_vote_once() {
        let face: Vec<Point> = (0..12)
            .map(|i| [(i as f32 * 0.7).sin(), (i as f32 * 1.3).cos()])
            .collect();
        let index = NeighborIndex::from_mean_face(&face, 4).unwrap();
        let mut total = 0;
        for j in 0..12 {
            for &flat in index.voters_of(j) {
                let (l, k) = (flat as usize / 4, flat as usize % 4);
                assert_eq!(index.neighbors_of(l)[k] as usize, j);
                total += 1;
            }
        }
        assert_eq!(total, 12 * 4);
    }

    #[test]
    fn test_bad_rows_are_refused() {
        assert!(NeighborIndex::from_rows(3, 1, vec![1, 2]).is_err());
        assert!(
            NeighborIndex::from_rows(3, 1, vec![0, 2, 0]).is_err(),
            "self-neighbour"
        );
        assert!(
            NeighborIndex::from_rows(3, 1, vec![1, 5, 0]).is_err(),
            "out of range"
        );
        assert!(NeighborIndex::from_mean_face(&[[0.0, 0.0], [1.0, 1.0]], 2).is_err());
    }
}
