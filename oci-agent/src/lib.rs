//! zvm's guest agent (work in progress).
