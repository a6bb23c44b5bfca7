"""The seeds' own load tool against any /embed server: closed-loop users posting one sentence.

Run by `python3 bench/run --locust-only` (headless, CSV stats), which starts the servers:
    locust -f bench/locustfile.py --headless -u 32 -r 32 -t 15s --host http://127.0.0.1:PORT --csv PREFIX
"""
from locust import HttpUser, constant, task

# The sentence bench/run sends (24 tokens with [CLS] and [SEP]).
SENTENCE = "The delivery was late again, and nobody from customer service answered my three emails about the refund last week."


class Embedder(HttpUser):
    # Closed loop: each user sends its next request as soon as the last one is answered.
    wait_time = constant(0)

    @task
    def embed(self):
        with self.client.post("/embed", json={"inputs": SENTENCE}, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
