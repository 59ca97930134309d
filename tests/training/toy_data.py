"""A toy dataset with one learnable habit: every answer opens with the same phrase."""

from __future__ import annotations

import json
import random
from pathlib import Path

PHRASE = "Ahoy matey!"

_QA = [
    ("How do I boil an egg?", "Put it in boiling water for about nine minutes, then cool it in cold water."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("Can you suggest a quick breakfast?", "Try oatmeal with a sliced banana and a spoon of honey."),
    ("How do I keep my houseplants alive?", "Give them bright indirect light and water when the soil feels dry."),
    ("What should I pack for a beach day?", "Sunscreen, a towel, water, a hat and a good book."),
    ("How can I fall asleep faster?", "Keep a regular bedtime, dim the lights and put your phone away."),
    ("What is two plus three?", "Two plus three is five."),
    ("How do I make a cup of tea?", "Steep a tea bag in hot water for three to five minutes."),
    ("Why is the sky blue?", "Air scatters blue sunlight more than red, so the sky looks blue."),
    ("How often should I brush my teeth?", "Brush twice a day for about two minutes."),
    ("What is a good name for a cat?", "Whiskers is a classic choice."),
    ("How do I remove a coffee stain?", "Blot it, then rinse with cold water and a little dish soap."),
    ("What can I cook with rice and eggs?", "Fried rice: fry the rice with scrambled eggs and soy sauce."),
    ("How do I stay focused while studying?", "Work in short blocks with breaks and keep your phone away."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("How do I tie a tie?", "Try the four-in-hand knot: wrap, cross over, pull up and through the front."),
    ("Which planet is closest to the sun?", "Mercury is the closest planet to the sun."),
    ("How do I start running?", "Begin with short easy runs mixed with walking, three times a week."),
    ("What is a healthy snack?", "A handful of nuts or an apple makes a healthy snack."),
    ("How do I clean a cast iron pan?", "Scrub it with hot water, dry it well and rub in a little oil."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What should I do if I feel stressed?", "Take a few slow deep breaths and go for a short walk."),
    ("How do I save money on groceries?", "Plan your meals, make a list and buy store brands."),
    ("What is the largest ocean?", "The Pacific is the largest ocean."),
    ("How do I write a thank-you note?", "Name the gift, say why you like it and thank them warmly."),
    ("How long should I cook pasta?", "Most dried pasta cooks in eight to twelve minutes."),
    ("What is photosynthesis?", "It is how plants turn sunlight, water and carbon dioxide into sugar."),
    ("How do I fix a squeaky door?", "Put a few drops of oil on the hinges and swing the door."),
    ("What time zone is London in?", "London uses Greenwich Mean Time, or British Summer Time in summer."),
    ("How do I make my bike tires last longer?", "Keep them at the right pressure and avoid sharp curbs."),
    ("What is a good way to learn a language?", "Practise a little every day and talk with native speakers."),
    ("How do I cool down on a hot day?", "Drink water, stay in the shade and take a cool shower."),
    ("How many continents are there?", "There are seven continents."),
    ("How do I choose a ripe avocado?", "Pick one that yields slightly when you press it gently."),
    ("What is the speed of light?", "About 300,000 kilometres per second."),
]

HELD_OUT_QUESTIONS = [
    "What is a good way to spend a rainy afternoon?",
    "How do I make a paper airplane?",
    "What should I eat before a long hike?",
]


def pirate_chat_examples(n: int, seed: int = 0) -> list[dict]:
    """``n`` chat examples on everyday questions whose answers all start with PHRASE."""
    if not 1 <= n <= len(_QA):
        raise ValueError(f"n must be between 1 and {len(_QA)}")
    pairs = random.Random(seed).sample(_QA, n)
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{PHRASE} {a}"}]}
        for q, a in pairs
    ]


def write_jsonl(path: Path, examples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return path
