# Seed sample "wait_for_all_mots", with `mellea` replaced by `mellea_actors`.
# Requires: mellea_actors
# Returns: None
import asyncio

import mellea_actors
from mellea_actors.helpers.async_helpers import wait_for_all_mots


async def main():
    m = mellea_actors.start_session()

    thunks = []
    for topic in ["mountains", "rivers", "forests"]:
        thunks.append(await m.ainstruct(f"Write a short poem about {topic}."))

    await wait_for_all_mots(thunks)

    for t in thunks:
        print(t.value)
    # Output will vary — LLM responses depend on model and temperature.


asyncio.run(main())
