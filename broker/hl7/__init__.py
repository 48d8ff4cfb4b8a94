"""HL7 v2: MLLP framing, listener and client, the lazy accessor, character sets, ACKs."""

from broker.hl7.ack import AckCode, AckError, build_ack
from broker.hl7.charset import CharsetError, DecodedFrame, decode_frame, encode_text
from broker.hl7.client import MllpClient
from broker.hl7.escape import escape, unescape
from broker.hl7.header import Header, HeaderError, parse_header
from broker.hl7.listener import FrameHandler, ListenerSettings, MllpListener
from broker.hl7.message import HL7ParseError, Message, Path, Segment, Separators, compile_path
from broker.hl7.mllp import END_BLOCK, START_BLOCK, FrameDecoder, frame

__all__ = [
    "END_BLOCK",
    "START_BLOCK",
    "AckCode",
    "AckError",
    "CharsetError",
    "DecodedFrame",
    "FrameDecoder",
    "FrameHandler",
    "HL7ParseError",
    "Header",
    "HeaderError",
    "ListenerSettings",
    "Message",
    "MllpClient",
    "MllpListener",
    "Path",
    "Segment",
    "Separators",
    "build_ack",
    "compile_path",
    "decode_frame",
    "encode_text",
    "escape",
    "frame",
    "parse_header",
    "unescape",
]
