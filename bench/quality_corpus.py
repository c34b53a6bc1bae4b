"""A deterministic, generated retrieval corpus with graded relevance labels (bench/quality.py).

Maintenance reports of an industrial site: each report has a title and a body long enough
that the model's window matters (about 350-600 word pieces against all-MiniLM-L6-v2's 256):

- one **primary topic** (a paragraph of 3 of the topic's sentences), placed either at the start
  of the body or after about 280 word pieces of site boilerplate, where truncation cuts it;
- one **secondary topic** (a single sentence somewhere in the body);
- a unique **part number** (e.g. ``KV-3817-B``) and a unique **inspector name**, each in one
  sentence at a random position in the body;
- a title that names the primary topic for half of the reports and is generic ("Site report
  0042") for the other half.

Queries and their graded labels (gain 2 = relevant, 1 = partly relevant):

- ``paraphrase``: two queries per topic, worded differently from the reports' sentences;
  reports with that primary topic gain 2, with that secondary topic gain 1;
- ``part``: a part number (alone, or in a short question); its report gains 2;
- ``name``: an inspector's name; their report gains 2.

Everything comes from `random.Random(seed)`: the same seed gives the same corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pydantic import BaseModel


class Report(BaseModel):
    """The entity indexed by the benchmark (its title and body are embeddable fields)."""

    title: str
    body: str


@dataclass(frozen=True)
class Topic:
    key: str
    title: str
    sentences: tuple[str, ...]
    queries: tuple[str, str]


TOPICS: tuple[Topic, ...] = (
    Topic(
        "pump_leak",
        "Hydraulic pump oil leak",
        (
            "The hydraulic pump on press line two was leaking oil from its main shaft seal.",
            "Technicians replaced the worn seal and refilled the reservoir with fresh hydraulic fluid.",
            "A drip tray now sits under the pump until the pressure test is repeated next week.",
            "Oil had pooled under the pump housing and reached the floor drain.",
        ),
        (
            "fluid escaping from the pressure unit of the press",
            "worn seal lets lubricant drip out of the machine",
        ),
    ),
    Topic(
        "roof",
        "Warehouse roof water damage",
        (
            "Rain water came through the warehouse roof above aisle seven after the storm.",
            "Several pallets of cardboard packaging were soaked and had to be discarded.",
            "A contractor patched the damaged roofing membrane and cleared the blocked gutters.",
            "Buckets were placed under the ceiling where water was still dripping.",
        ),
        (
            "storm caused a leak in the storage building ceiling",
            "goods got wet because the top of the hall let rain in",
        ),
    ),
    Topic(
        "forklift",
        "Forklift battery failure",
        (
            "Forklift number four stopped in the middle of a shift because its traction battery was flat.",
            "The charger in bay three had a broken cable, so the battery never charged overnight.",
            "The battery cells were tested and two of them showed low voltage.",
            "Drivers were told to report charging problems before the start of the morning shift.",
        ),
        (
            "lift truck ran out of power during work",
            "charging station fault left the electric truck without energy",
        ),
    ),
    Topic(
        "fire_alarm",
        "Fire alarm test results",
        (
            "The quarterly fire alarm test found two smoke detectors that did not trigger.",
            "Both detectors in the paint shop were replaced and tested again with aerosol smoke.",
            "The evacuation took four minutes and all staff gathered at the assembly point.",
            "The alarm panel log showed a fault in zone five that was traced to a loose wire.",
        ),
        (
            "smoke sensors failed during the emergency drill",
            "how long did it take everyone to leave the building in the drill",
        ),
    ),
    Topic(
        "conveyor",
        "Conveyor belt misalignment",
        (
            "The conveyor belt in the packing hall drifted to the left and rubbed against the frame.",
            "The tail pulley was realigned and the belt tension adjusted on both sides.",
            "Frayed edges along the belt were trimmed to stop threads catching in the rollers.",
            "Boxes had been falling off the belt at the transfer point near the scanner.",
        ),
        (
            "the moving band that carries parcels keeps running off track",
            "packages drop off the transport line near the barcode reader",
        ),
    ),
    Topic(
        "hvac",
        "Air conditioning breakdown",
        (
            "The air conditioning unit on the office roof stopped cooling during the heat wave.",
            "A refrigerant leak was found at a corroded joint of the condenser coil.",
            "Temperatures in the server room rose above thirty degrees before portable coolers arrived.",
            "The compressor was refilled with refrigerant and the joint was brazed.",
        ),
        (
            "offices became too hot because the cooling system failed",
            "gas escaped from the climate unit and the computer room overheated",
        ),
    ),
    Topic(
        "spill",
        "Chemical spill in the lab",
        (
            "A container of cleaning solvent tipped over in the quality lab and spilled on the bench.",
            "Staff used the spill kit absorbent and ventilated the room for an hour.",
            "Two employees reported headaches and were checked by the first aid officer.",
            "The solvent is now stored in a locked cabinet with a drip tray.",
        ),
        (
            "liquid cleaner leaked in the testing room and people felt unwell",
            "how was the hazardous substance accident in the laboratory handled",
        ),
    ),
    Topic(
        "welding",
        "Welding robot calibration",
        (
            "The welding robot in cell six placed its seams several millimetres off the joint.",
            "Calibration of the tool centre point showed the torch had been bent in a collision.",
            "After a new torch neck was fitted the robot was taught its reference points again.",
            "Rejected frames from the night shift were inspected and reworked by hand.",
        ),
        (
            "automated arm joins metal parts in the wrong place",
            "the machine that fuses steel frames needs its positions taught again",
        ),
    ),
    Topic(
        "power",
        "Power outage and generator",
        (
            "A power cut from the grid stopped production for forty minutes on Tuesday.",
            "The backup generator started but tripped after ten minutes because of low fuel pressure.",
            "The fuel filter of the generator was clogged and has been replaced.",
            "Machines were restarted in a fixed order to avoid a current surge.",
        ),
        (
            "electricity went down and the emergency supply failed too",
            "why did the standby diesel engine stop during the blackout",
        ),
    ),
    Topic(
        "compressor",
        "Compressed air pressure drop",
        (
            "Pressure in the compressed air network fell below six bar during peak hours.",
            "An ultrasonic survey located leaks at quick couplings and a cracked hose in hall B.",
            "Fixing the leaks reduced the running time of the air compressor by a fifth.",
            "Pneumatic tools at the assembly stations were running slowly because of the drop.",
        ),
        (
            "air tools lost strength because the pneumatic supply was weak",
            "finding where the pressurised air escapes from the pipes",
        ),
    ),
    Topic(
        "injury",
        "Hand injury at the cutting station",
        (
            "An operator cut his hand on the guillotine at the cutting station.",
            "The safety guard had been removed to clear a jam and was not put back.",
            "The wound was treated in hospital and the operator returned after three days.",
            "All cutting machines now have interlocks that stop the blade when the guard is open.",
        ),
        (
            "worker hurt by a blade after the protective cover was taken off",
            "accident with the shearing machine and the missing shield",
        ),
    ),
    Topic(
        "pest",
        "Rodents in the food storage",
        (
            "Mouse droppings were found behind the shelves of the canteen food store.",
            "A pest control company set bait stations and sealed gaps around the pipes.",
            "Open bags of flour and rice were thrown away as a precaution.",
            "The store will be checked every week until no new signs are found.",
        ),
        (
            "mice got into the kitchen pantry",
            "vermin traces near the staff restaurant supplies",
        ),
    ),
    Topic(
        "it_outage",
        "Network switch failure",
        (
            "The core network switch rebooted repeatedly and cut off the barcode scanners.",
            "Orders could not be confirmed for two hours and trucks waited at the gate.",
            "The switch firmware had a known memory bug and was upgraded that evening.",
            "A spare switch is now kept configured in the server room.",
        ),
        (
            "handheld readers lost their connection and shipments were delayed",
            "a bug in the networking hardware software stopped the warehouse systems",
        ),
    ),
    Topic(
        "noise",
        "Noise complaint from neighbours",
        (
            "Neighbours complained about loud banging from the loading dock at night.",
            "Noise measurements at the fence showed peaks above the permitted level after ten in the evening.",
            "Night deliveries were moved to the north gate, away from the houses.",
            "Rubber buffers were fitted to the dock levellers to soften the impacts.",
        ),
        (
            "residents were disturbed by sound from the trucks after dark",
            "the site was too loud for the people living next door",
        ),
    ),
    Topic(
        "boiler",
        "Boiler inspection",
        (
            "The annual boiler inspection found scale deposits on the heat exchanger tubes.",
            "The water treatment dosing pump had been set too low for months.",
            "The tubes were descaled with acid and the dosing rate was corrected.",
            "The safety valve was tested and released at the right pressure.",
        ),
        (
            "mineral build-up inside the heating plant",
            "yearly check of the steam generator and its relief valve",
        ),
    ),
    Topic(
        "waste",
        "Waste sorting audit",
        (
            "An audit of the waste containers found plastic film mixed into the paper recycling.",
            "The recycling company charged a penalty for the contaminated load.",
            "New colour-coded bins and signs were placed at every workstation.",
            "Cleaning staff will report containers with wrongly sorted waste.",
        ),
        (
            "rubbish was put in the wrong recycling containers and we were fined",
            "improving how the site separates its garbage",
        ),
    ),
)

BOILERPLATE: tuple[str, ...] = (
    "This report was prepared as part of the regular review of site operations.",
    "It follows the standard structure agreed with the facility management team.",
    "The findings below were discussed at the weekly coordination meeting.",
    "All times in this document refer to the local time at the site.",
    "Earlier reports on the same area can be found in the document archive.",
    "The shift supervisor confirmed the sequence of events described here.",
    "Photographs taken during the visit are stored with the maintenance records.",
    "The area was accessible and no special permits were needed for the visit.",
    "Responsibilities for the follow-up actions are listed at the end of this report.",
    "The budget for the work falls under the general maintenance allowance.",
    "Comments on this report can be sent to the site office within two weeks.",
    "The document will be reviewed again at the next quarterly audit.",
    "Production planning was informed about the expected impact on capacity.",
    "The contractor's work permit and insurance were checked before the start.",
    "Personal protective equipment was worn by everyone present during the work.",
    "The relevant manuals and drawings were consulted where needed.",
    "Spare parts were taken from the central store and booked on the work order.",
    "No other departments were affected by the activities described.",
    "The visit took place during normal working hours on a weekday.",
    "A copy of this report goes to the health and safety committee.",
    "Measurements were taken with calibrated instruments from the tool room.",
    "The work order was closed after the supervisor signed it off.",
    "Costs will be reported in the monthly maintenance overview.",
    "The site map in the appendix shows the location of the area concerned.",
)

FIRST_NAMES = (
    "Ingrid", "Tomasz", "Amara", "Joost", "Leila", "Henrik", "Sofia", "Kwame", "Mirela",
    "Dieter", "Priya", "Anouk", "Rafael", "Yuki", "Olga", "Bram", "Fatima", "Lars", "Chiara",
    "Emeka",
)  # fmt: skip
LAST_NAMES = (
    "Vasquez", "Kowalczyk", "Okafor", "Brouwer", "Haddad", "Lindqvist", "Moretti", "Mensah",
    "Popescu", "Falkenberg", "Raghunathan", "Verhoeven", "Castellanos", "Tanabe", "Sokolova",
    "Dijkstra", "Benali", "Nygaard", "Esposito", "Adeyemi",
)  # fmt: skip

PART_SENTENCES = (
    "Part {part} was ordered from the supplier as a replacement.",
    "The technician noted that part {part} showed signs of wear.",
    "Stock of part {part} in the central store was checked afterwards.",
)
NAME_SENTENCES = (
    "The inspection was carried out by {name}.",
    "{name} signed the work order at the end of the visit.",
    "Questions about this report can be addressed to {name}.",
)
PART_QUERIES = ("{part}", "part {part}", "where was {part} replaced")


@dataclass
class Document:
    doc_id: str
    title: str
    body: str
    topic: str
    secondary: str
    part: str
    name: str
    late_topic: bool


@dataclass
class Query:
    query_id: str
    kind: str  # paraphrase, part, name
    text: str
    relevant: dict[str, int] = field(default_factory=dict)  # doc id -> gain


@dataclass
class Corpus:
    documents: list[Document]
    queries: list[Query]


def _part(rng: random.Random, used: set[str]) -> str:
    while True:
        letters = "".join(rng.choice("BCDFGHJKLMNPRSTVWXZ") for _ in range(2))
        part = f"{letters}-{rng.randint(1000, 9999)}-{rng.choice('ABCDE')}"
        if part not in used:
            used.add(part)
            return part


def _boilerplate(rng: random.Random, count: int) -> list[str]:
    return [rng.choice(BOILERPLATE) for _ in range(count)]


def generate(docs_per_topic: int = 15, seed: int = 16) -> Corpus:
    """The corpus: ``docs_per_topic`` reports per topic, their queries and labels."""
    rng = random.Random(seed)
    names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    rng.shuffle(names)
    parts: set[str] = set()
    documents: list[Document] = []
    number = 0
    for topic in TOPICS:
        for i in range(docs_per_topic):
            number += 1
            secondary = rng.choice([t for t in TOPICS if t.key != topic.key])
            part, name = _part(rng, parts), names.pop()
            late = i % 2 == 1
            paragraph = rng.sample(topic.sentences, 3)
            lead = _boilerplate(rng, 21 if late else 2)
            tail = _boilerplate(rng, rng.randint(6, 12))
            sentences = lead + paragraph + tail if late else lead[:1] + paragraph + lead[1:] + tail
            extras = [
                rng.choice(secondary.sentences),
                rng.choice(PART_SENTENCES).format(part=part),
                rng.choice(NAME_SENTENCES).format(name=name),
            ]
            for extra in extras:  # anywhere except inside the topic paragraph
                start = len(lead) + 3 if late else 4
                sentences.insert(rng.choice([0, *range(start, len(sentences) + 1)]), extra)
            title = topic.title if rng.random() < 0.5 else f"Site report {number:04d}"
            documents.append(
                Document(
                    doc_id=f"r{number:04d}",
                    title=title,
                    body=" ".join(sentences),
                    topic=topic.key,
                    secondary=secondary.key,
                    part=part,
                    name=name,
                    late_topic=late,
                )
            )

    queries: list[Query] = []
    for topic in TOPICS:
        gains = {d.doc_id: 1 for d in documents if d.secondary == topic.key}
        gains.update({d.doc_id: 2 for d in documents if d.topic == topic.key})
        for j, text in enumerate(topic.queries):
            queries.append(Query(f"{topic.key}-{j}", "paraphrase", text, dict(gains)))
    sample = rng.sample(documents, min(len(documents), 3 * len(TOPICS)))
    half = len(sample) // 2
    for d in sample[:half]:
        text = rng.choice(PART_QUERIES).format(part=d.part)
        queries.append(Query(f"part-{d.doc_id}", "part", text, {d.doc_id: 2}))
    for d in sample[half:]:
        queries.append(Query(f"name-{d.doc_id}", "name", d.name, {d.doc_id: 2}))
    return Corpus(documents, queries)


def late_queries(corpus: Corpus) -> list[Query]:
    """The paraphrase queries judged on the reports whose topic comes late in the body (past
    the model's window, where truncation cuts it): gain 2 for those reports only. Same ids and
    texts as the paraphrase queries (a view of their rankings, not more queries)."""
    late = {d.doc_id for d in corpus.documents if d.late_topic}
    return [
        Query(
            q.query_id,
            "late",
            q.text,
            {d: 2 for d, g in q.relevant.items() if d in late and g == 2},
        )
        for q in corpus.queries
        if q.kind == "paraphrase"
    ]
