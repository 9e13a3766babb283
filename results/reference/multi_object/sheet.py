"""Session 15 (results/reference/README.md): a sheet of a run's GenEval images for the multi-object tags (prompt under each; OK when judged correct)."""
import json
import sys

from PIL import Image, ImageDraw

rows = [json.loads(line) for line in open(sys.argv[1])]
sel = [r for r in rows if r['tag'] in ('two_object', 'position', 'counting', 'color_attr')][:24]
CW, CH = 150, 110
sheet = Image.new('RGB', (6 * CW, 4 * CH), 'white')
d = ImageDraw.Draw(sheet)
for i, r in enumerate(sel):
    x, y = (i % 6) * CW, (i // 6) * CH
    sheet.paste(Image.open(r['filename']).resize((80, 80)), (x, y))
    p = r['prompt'].replace('a photo of ', '')
    d.text((x, y + 82), p[:26], fill='black')
    d.text((x, y + 94), p[26:52] + (' OK' if r['correct'] else ''), fill='red' if r['correct'] else 'black')
sheet.save(sys.argv[2])
