//! Borrowed-or-owned strings and byte strings for wire types.
//!
//! Decoding from postcard borrows from the input buffer, so a device without
//! an allocator can decode in place. With `alloc` the same types may also own
//! their contents, which JSON input (escapes) and long-lived state need.

use core::fmt;
use core::ops::Deref;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::ser::{Serialize, Serializer};

#[cfg(feature = "alloc")]
use alloc::{borrow::Cow, string::String, vec::Vec};

#[cfg(feature = "alloc")]
type StrInner<'a> = Cow<'a, str>;
#[cfg(not(feature = "alloc"))]
type StrInner<'a> = &'a str;

#[cfg(feature = "alloc")]
type BytesInner<'a> = Cow<'a, [u8]>;
#[cfg(not(feature = "alloc"))]
type BytesInner<'a> = &'a [u8];

/// A UTF-8 string on the wire: borrowed from the decode buffer, or owned
/// (with `alloc`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Text<'a>(StrInner<'a>);

impl<'a> Text<'a> {
    /// A text borrowing `s`.
    pub const fn borrowed(s: &'a str) -> Self {
        #[cfg(feature = "alloc")]
        {
            Text(Cow::Borrowed(s))
        }
        #[cfg(not(feature = "alloc"))]
        {
            Text(s)
        }
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        #[cfg(feature = "alloc")]
        {
            &self.0
        }
        #[cfg(not(feature = "alloc"))]
        {
            self.0
        }
    }

    /// A copy that owns its contents and so outlives the decode buffer.
    #[cfg(feature = "alloc")]
    pub fn into_owned(self) -> Text<'static> {
        Text(Cow::Owned(self.0.into_owned()))
    }
}

#[cfg(feature = "alloc")]
impl Text<'static> {
    /// A text owning `s`.
    pub fn owned(s: String) -> Self {
        Text(Cow::Owned(s))
    }
}

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text<'_> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl<'a> From<&'a str> for Text<'a> {
    fn from(s: &'a str) -> Self {
        Text::borrowed(s)
    }
}

#[cfg(feature = "alloc")]
impl From<String> for Text<'static> {
    fn from(s: String) -> Self {
        Text::owned(s)
    }
}

impl PartialEq<str> for Text<'_> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Text<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=str}", self.as_str())
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text::borrowed(v))
            }
            #[cfg(feature = "alloc")]
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.into())))
            }
            #[cfg(feature = "alloc")]
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A byte string on the wire: borrowed from the decode buffer, or owned
/// (with `alloc`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes<'a>(BytesInner<'a>);

impl<'a> Bytes<'a> {
    /// Bytes borrowing `b`.
    pub const fn borrowed(b: &'a [u8]) -> Self {
        #[cfg(feature = "alloc")]
        {
            Bytes(Cow::Borrowed(b))
        }
        #[cfg(not(feature = "alloc"))]
        {
            Bytes(b)
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        #[cfg(feature = "alloc")]
        {
            &self.0
        }
        #[cfg(not(feature = "alloc"))]
        {
            self.0
        }
    }

    /// A copy that owns its contents.
    #[cfg(feature = "alloc")]
    pub fn into_owned(self) -> Bytes<'static> {
        Bytes(Cow::Owned(self.0.into_owned()))
    }
}

#[cfg(feature = "alloc")]
impl Bytes<'static> {
    /// Bytes owning `v`.
    pub fn owned(v: Vec<u8>) -> Self {
        Bytes(Cow::Owned(v))
    }
}

impl Deref for Bytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl<'a> From<&'a [u8]> for Bytes<'a> {
    fn from(b: &'a [u8]) -> Self {
        Bytes::borrowed(b)
    }
}

impl fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match core::str::from_utf8(self.as_slice()) {
            Ok(s) => write!(f, "b{s:?}"),
            Err(_) => fmt::Debug::fmt(self.as_slice(), f),
        }
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Bytes<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=[u8]}", self.as_slice())
    }
}

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_slice())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(Bytes::borrowed(v))
            }
            #[cfg(feature = "alloc")]
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(Bytes(Cow::Owned(v.into())))
            }
            #[cfg(feature = "alloc")]
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(Bytes(Cow::Owned(v)))
            }
            #[cfg(feature = "alloc")]
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Bytes(Cow::Owned(v)))
            }
        }
        d.deserialize_bytes(V)
    }
}
