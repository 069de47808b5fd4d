//! Blobs: content addressing.

use super::*;

/// Content addressing: ids are digests, puts are idempotent.
pub async fn blobs(blobs: &dyn BlobStore) {
    let data = Bytes::from(vec![7u8; 300_000]);
    let id = blobs.put(data.clone()).await.unwrap();
    assert_eq!(id, digest_of(&data));
    assert!(id.starts_with("sha256:") && id.len() == 7 + 64);
    assert_eq!(blobs.put(data.clone()).await.unwrap(), id);
    assert_eq!(blobs.get(&id).await.unwrap(), Some(data.clone()));
    assert_eq!(blobs.get(&digest_of(b"absent")).await.unwrap(), None);
    let empty = blobs.put(Bytes::new()).await.unwrap();
    assert_eq!(blobs.get(&empty).await.unwrap(), Some(Bytes::new()));
    let stored = blobs.digests().await.unwrap();
    assert!(
        stored.contains(&id) && stored.contains(&empty),
        "{stored:?}"
    );
    // Removed: gone, and removing again says so.
    assert!(blobs.delete(&id).await.unwrap());
    assert!(!blobs.digests().await.unwrap().contains(&id));
    assert_eq!(blobs.get(&id).await.unwrap(), None);
    assert!(!blobs.delete(&id).await.unwrap());
    assert_eq!(blobs.put(data.clone()).await.unwrap(), id, "stored again");
}
