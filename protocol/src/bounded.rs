//! Lists with a compile-time upper bound.
//!
//! Without `alloc` the elements live inline (`heapless::Vec`); with it they
//! live on the heap. Either way deserializing more than `N` elements is an
//! error, never a truncation, and the wire form is a plain postcard sequence
//! (or map), identical in both builds.

use core::fmt;
use core::marker::PhantomData;
use core::ops::Deref;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

#[cfg(feature = "alloc")]
type Inner<T, const N: usize> = alloc::vec::Vec<T>;
#[cfg(not(feature = "alloc"))]
type Inner<T, const N: usize> = heapless::Vec<T, N>;

/// A push onto a full bounded list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {limit} entries (the limit)")]
pub struct CapacityError {
    /// The bound that was hit.
    pub limit: usize,
}

/// A list of at most `N` elements.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BoundedVec<T, const N: usize>(Inner<T, N>);

impl<T, const N: usize> BoundedVec<T, N> {
    /// The bound.
    pub const CAPACITY: usize = N;

    /// An empty list.
    pub const fn new() -> Self {
        #[cfg(feature = "alloc")]
        {
            BoundedVec(alloc::vec::Vec::new())
        }
        #[cfg(not(feature = "alloc"))]
        {
            BoundedVec(heapless::Vec::new())
        }
    }

    /// Appends `value`, or fails when the list already holds `N` elements.
    pub fn push(&mut self, value: T) -> Result<(), CapacityError> {
        if self.0.len() >= N {
            return Err(CapacityError { limit: N });
        }
        #[cfg(feature = "alloc")]
        {
            self.0.push(value);
            Ok(())
        }
        #[cfg(not(feature = "alloc"))]
        {
            self.0.push(value).map_err(|_| CapacityError { limit: N })
        }
    }

    /// Builds a list from an iterator, failing when it yields more than `N`.
    pub fn try_from_iter<I: IntoIterator<Item = T>>(iter: I) -> Result<Self, CapacityError> {
        let mut v = Self::new();
        for item in iter {
            v.push(item)?;
        }
        Ok(v)
    }

    /// Converts every element, keeping the bound.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> BoundedVec<U, N> {
        let mut out = BoundedVec::new();
        for item in self.0.into_iter().map(f) {
            // Same length as `self`, which already respects `N`.
            let _ = out.push(item);
        }
        out
    }
}

impl<T, const N: usize> Default for BoundedVec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Deref for BoundedVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<'s, T, const N: usize> IntoIterator for &'s BoundedVec<T, N> {
    type Item = &'s T;
    type IntoIter = core::slice::Iter<'s, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: fmt::Debug, const N: usize> fmt::Debug for BoundedVec<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(feature = "defmt")]
impl<T: defmt::Format, const N: usize> defmt::Format for BoundedVec<T, N> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=[?]}", &self[..])
    }
}

impl<T: Serialize, const N: usize> Serialize for BoundedVec<T, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for BoundedVec<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
            type Value = BoundedVec<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {N} entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                if let Some(n) = seq.size_hint().filter(|n| *n > N) {
                    return Err(de::Error::invalid_length(n, &self));
                }
                let mut out = BoundedVec::new();
                while let Some(item) = seq.next_element()? {
                    out.push(item)
                        .map_err(|_| de::Error::invalid_length(N + 1, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V::<T, N>(PhantomData))
    }
}

/// A map of at most `N` entries with unique keys, kept in insertion order.
///
/// JSON sees an object; postcard sees a map (length, then key/value pairs).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BoundedMap<K, V, const N: usize>(BoundedVec<(K, V), N>);

impl<K: PartialEq, V, const N: usize> BoundedMap<K, V, N> {
    /// An empty map.
    pub const fn new() -> Self {
        BoundedMap(BoundedVec::new())
    }

    /// Inserts or replaces the value of `key`.
    pub fn insert(&mut self, key: K, value: V) -> Result<(), CapacityError> {
        if let Some(slot) = self.0.0.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
            return Ok(());
        }
        self.0.push((key, value))
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: PartialEq<Q>,
        Q: ?Sized,
    {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Converts every entry, keeping the bound.
    pub fn map<K2, V2>(self, mut f: impl FnMut(K, V) -> (K2, V2)) -> BoundedMap<K2, V2, N> {
        BoundedMap(self.0.map(|(k, v)| f(k, v)))
    }
}

impl<K: PartialEq, V, const N: usize> Default for BoundedMap<K, V, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: fmt::Debug, V: fmt::Debug, const N: usize> fmt::Debug for BoundedMap<K, V, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

#[cfg(feature = "defmt")]
impl<K: defmt::Format, V: defmt::Format, const N: usize> defmt::Format for BoundedMap<K, V, N> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=[?]}", &self.0[..])
    }
}

impl<K: Serialize, V: Serialize, const N: usize> Serialize for BoundedMap<K, V, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, K, V, const N: usize> Deserialize<'de> for BoundedMap<K, V, N>
where
    K: Deserialize<'de> + PartialEq + fmt::Display,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<K, V, const N: usize>(PhantomData<(K, V)>);
        impl<'de, K, V, const N: usize> Visitor<'de> for Vis<K, V, N>
        where
            K: Deserialize<'de> + PartialEq + fmt::Display,
            V: Deserialize<'de>,
        {
            type Value = BoundedMap<K, V, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a map of at most {N} entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                if let Some(n) = map.size_hint().filter(|n| *n > N) {
                    return Err(de::Error::invalid_length(n, &self));
                }
                let mut out = BoundedMap::new();
                while let Some((k, v)) = map.next_entry::<K, V>()? {
                    if out.get(&k).is_some() {
                        return Err(de::Error::custom(format_args!("duplicate key `{k}`")));
                    }
                    out.0
                        .push((k, v))
                        .map_err(|_| de::Error::invalid_length(N + 1, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_map(Vis::<K, V, N>(PhantomData))
    }
}
