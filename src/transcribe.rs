//! Offline transcription of files: decode → mel → model → text/JSON/SRT/VTT.
