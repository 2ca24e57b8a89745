"""RTSP/RTP ingest: sessions, depacketizers and the time model."""
