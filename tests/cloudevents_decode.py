"""Decodes Kafka records with the official CloudEvents Python SDK (Kafka binding, binary
content mode): the independent reader of tests/cloudevents.rs.

stdin: a JSON list of records {"headers": [[name, hex]], "key": hex|null, "value": hex}
stdout: a JSON list of events {"specversion", "id", "source", "type", "time" (epoch ms),
"subject", "datacontenttype", "data", "partitionkey"}.
"""
import json
import sys

from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event


def decode(record):
    headers = {name: bytes.fromhex(v) for name, v in record["headers"]}
    key = bytes.fromhex(record["key"]) if record["key"] is not None else None
    message = KafkaMessage(headers=headers, key=key, value=bytes.fromhex(record["value"]))
    event = from_binary_event(message)
    time = event.get_time()
    key = event.get_extension("partitionkey")
    return {
        "specversion": event.get_specversion(),
        "id": event.get_id(),
        "source": event.get_source(),
        "type": event.get_type(),
        "time": round(time.timestamp() * 1000) if time is not None else None,
        "subject": event.get_subject(),
        "datacontenttype": event.get_datacontenttype(),
        "data": event.get_data(),
        "partitionkey": key.decode() if isinstance(key, bytes) else key,
    }


json.dump([decode(r) for r in json.load(sys.stdin)], sys.stdout)
